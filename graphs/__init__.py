"""Attribution graphs: the graph object, its metrics and every export. Never imports `circuits`."""

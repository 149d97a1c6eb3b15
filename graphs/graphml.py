"""GraphML for any ``networkx.DiGraph``, read back with every attribute as it was written.

GraphML holds one scalar per attribute (bool, int, float, string), declared once per key. So:
``None`` is dropped (GraphML has no null); numpy scalars become Python ones (a float32 is
written as the exact double it equals); and a key that holds anything else in some element
(a list, a dict, mixed types, or text XML cannot carry such as control characters or ``\\r``)
is stored as JSON text for every element, and listed in the graph attribute ``json_attrs``
so ``read_graphml`` decodes it. Non-string node keys are stored as JSON the same way.
Tuples come back as lists (JSON has no tuples), except in node keys, which must stay hashable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any, TextIO
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

import networkx as nx
import numpy as np

from graphs.nodes import unreadable
from transcoders.writes import atomic_file

JSON_ATTRS = "json_attrs"  # graph attribute: {"graph": [...], "node": [...], "edge": [...]} keys stored as JSON
JSON_NODE_KEYS = "json_node_keys"  # graph attribute: node keys are JSON text

# Characters XML 1.0 cannot hold, and \r, which XML parsers turn into \n.
_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0d\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def write_graphml(g: nx.DiGraph, path: str | Path) -> Path:
    """Write ``g`` to ``path`` (atomically) as GraphML that ``read_graphml`` turns back into an equal graph."""
    path = Path(path)
    ready = graphml_ready(g)
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        _stream_xml(ready, f)
    return path


def _graphml_type(value: bool | int | float | str) -> str:
    """GraphML's attribute type, as networkx's reader maps it back ("long" for ints: no 32-bit limit)."""
    for kind, name in ((bool, "boolean"), (int, "long"), (float, "double"), (str, "string")):
        if isinstance(value, kind):
            return name
    raise TypeError(f"graphml_ready left a {type(value).__name__}; it should have stored it as JSON text")


_HEAD = ('<?xml version=\'1.0\' encoding=\'utf-8\'?>\n<graphml xmlns="http://graphml.graphdrawing.org/xmlns" '
         'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://graphml.graphdrawing.org/'
         'xmlns http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">\n')


def _stream_xml(g: nx.DiGraph, f: TextIO) -> None:
    """``g`` (from ``graphml_ready``: one scalar type per key) as GraphML text, element by element.

    networkx's writer builds the whole document as an element tree first: on the demo's graph of
    547k edges that was most of the 19 s its writing took. The text is what its reader expects.
    """
    keys: dict[tuple[str, str], str] = {}  # (domain, attribute) -> key id
    decls: list[str] = []
    for domain, elements in (("graph", [g.graph]), ("node", (a for _, a in g.nodes(data=True))),
                             ("edge", (a for *_, a in g.edges(data=True)))):
        for attrs in elements:
            for k, v in attrs.items():
                if (domain, k) not in keys:
                    keys[domain, k] = f"d{len(keys)}"
                    decls.append(f'<key id="{keys[domain, k]}" for="{domain}" attr.name={quoteattr(k)} '
                                 f'attr.type="{_graphml_type(v)}" />\n')

    def data(domain: str, attrs: dict[str, Any]) -> str:
        return "".join(f'<data key="{keys[domain, k]}">{_text(v)}</data>' for k, v in attrs.items())

    f.write(_HEAD)
    f.writelines(decls)
    f.write(f'<graph edgedefault="directed">{data("graph", g.graph)}\n')
    lines: list[str] = []
    for n, attrs in g.nodes(data=True):
        lines.append(f"<node id={quoteattr(n)}>{data('node', attrs)}</node>\n")
    for s, t, attrs in g.edges(data=True):
        lines.append(f"<edge source={quoteattr(s)} target={quoteattr(t)}>{data('edge', attrs)}</edge>\n")
        if len(lines) >= 50_000:
            f.writelines(lines)
            lines.clear()
    f.writelines(lines)
    f.write("</graph></graphml>\n")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return escape(value)
    return repr(value)  # ints; floats as the shortest text that reads back to the same double


def read_graphml(path: str | Path) -> nx.DiGraph:
    """Read a GraphML file; files from ``write_graphml`` come back with their original attributes."""
    try:
        g = nx.read_graphml(Path(path), node_type=str)
    except (ElementTree.ParseError, nx.NetworkXError, UnicodeDecodeError) as exc:
        raise unreadable(path, exc) from exc
    if not isinstance(g, nx.DiGraph):
        raise ValueError(f"{path} holds an undirected graph; attribution graphs are directed. "
                         "Fix: write it from an nx.DiGraph.")
    for key in ("node_default", "edge_default"):  # networkx's reader adds these
        if g.graph.get(key) == {}:
            del g.graph[key]
    json_keys = json.loads(g.graph.pop(JSON_ATTRS, "{}"))
    if g.graph.pop(JSON_NODE_KEYS, False):
        g = nx.relabel_nodes(g, {n: _hashable(json.loads(n)) for n in g.nodes}, copy=True)
    _decode(g.graph, json_keys.get("graph", ()))
    for _, attrs in g.nodes(data=True):
        _decode(attrs, json_keys.get("node", ()))
    for _, _, attrs in g.edges(data=True):
        _decode(attrs, json_keys.get("edge", ()))
    return g


def graphml_ready(g: nx.DiGraph) -> nx.DiGraph:
    """A copy of ``g`` holding only what GraphML can (see the module docstring)."""
    graph_attrs = _scalars(g.graph)
    node_attrs = [_scalars(a) for _, a in g.nodes(data=True)]
    edge_attrs = [_scalars(a) for _, _, a in g.edges(data=True)]
    json_keys = {"graph": _json_keys([graph_attrs]), "node": _json_keys(node_attrs), "edge": _json_keys(edge_attrs)}
    out = nx.DiGraph()
    out.graph.update(_encode(graph_attrs, json_keys["graph"]))
    if any(json_keys.values()):
        out.graph[JSON_ATTRS] = json.dumps({k: sorted(v) for k, v in json_keys.items() if v})
    keyed_json = any(not isinstance(n, str) for n in g.nodes)
    if keyed_json:
        out.graph[JSON_NODE_KEYS] = True
    key = (lambda n: json.dumps(n, default=_plain)) if keyed_json else (lambda n: n)
    for n, attrs in zip(g.nodes, node_attrs):
        out.add_node(key(n), **_encode(attrs, json_keys["node"]))
    for (s, t), attrs in zip(g.edges, edge_attrs):
        out.add_edge(key(s), key(t), **_encode(attrs, json_keys["edge"]))
    return out


def _scalars(attrs: MutableMapping[str, Any]) -> dict[str, Any]:
    """Attributes without None, numpy scalars as Python scalars."""
    return {str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items() if v is not None}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str" if not _XML_UNSAFE.search(value) else "json"
    return "json"


def _json_keys(elements: Iterable[dict[str, Any]]) -> set[str]:
    """Keys that must be stored as JSON: any non-scalar or unsafe value, or mixed types across elements."""
    kinds: dict[str, set[str]] = {}
    for attrs in elements:
        for k, v in attrs.items():
            kinds.setdefault(k, set()).add(_kind(v))
    return {k for k, ks in kinds.items() if "json" in ks or len(ks) > 1}


def _encode(attrs: dict[str, Any], json_keys: set[str]) -> dict[str, Any]:
    return {k: json.dumps(v, default=_plain) if k in json_keys else v for k, v in attrs.items()}


def _decode(attrs: MutableMapping[str, Any], json_keys: Iterable[str]) -> None:
    for k in json_keys:
        if k in attrs:
            attrs[k] = json.loads(attrs[k])


def _plain(value: Any) -> Any:
    """JSON for numpy values inside lists and dicts."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store a {type(value).__name__} in GraphML. Fix: convert it to numbers, strings, "
                    "lists or dicts first.")


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value

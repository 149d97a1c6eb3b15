"""Head-level discovery over the ``HeadGraph`` of the original model (attention heads and MLPs).

- ``edges``: ``discover_edges`` -> ``Circuit`` (ACDC in ``acdc``, EAP and EAP-IG in ``eap``);
- ``nodes``: ``discover_nodes`` -> ``NodeCircuit`` (node ACDC in ``acdc_nodes``, node EAP);
- ``circuit``, ``node_circuit``: the two circuit types; ``prune``: edges that reach the logits;
- ``mib``: MIB's faithfulness over edge budgets, CPR and CMD, of any method's edge ranking.
"""

from circuits.discovery.heads.acdc import acdc
from circuits.discovery.heads.acdc_nodes import acdc_nodes
from circuits.discovery.heads.circuit import Circuit
from circuits.discovery.heads.eap import attribution_circuit, measure_effects
from circuits.discovery.heads.mib import MibScores, edge_ranking, mib_scores
from circuits.discovery.heads.edges import EdgeMethod, discover_edges
from circuits.discovery.heads.node_circuit import NodeCircuit
from circuits.discovery.heads.nodes import discover_nodes, eap_nodes
from circuits.discovery.heads.prune import prune_dead, reaches_logits, top_edges

__all__ = ["Circuit", "EdgeMethod", "MibScores", "NodeCircuit", "acdc", "acdc_nodes", "attribution_circuit",
           "discover_edges", "discover_nodes", "eap_nodes", "edge_ranking", "measure_effects", "mib_scores", "prune_dead",
           "reaches_logits", "top_edges"]

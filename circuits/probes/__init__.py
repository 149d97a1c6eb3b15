"""Head-role probes that need no circuit: where heads attend (``attention``), what their OV
circuits write (``ov``), and the IOI roles built from both (``ioi``)."""

from circuits.probes.attention import (attention_patterns, attention_score, repeated_token_scores, repeated_tokens,
                                       top_heads, without_sink)
from circuits.probes.ioi import (IOI_ROLE_THRESHOLDS, ioi_attention_scores, ioi_copying_scores, ioi_head_roles,
                                 ioi_probe_scores, role_base_rate, roles_from_scores)
from circuits.probes.ov import copying_scores, ov_copying, residual_at, residual_copying

__all__ = [
    "IOI_ROLE_THRESHOLDS", "attention_patterns", "attention_score", "copying_scores", "ioi_attention_scores",
    "ioi_copying_scores", "ioi_head_roles", "ioi_probe_scores", "ov_copying", "repeated_token_scores",
    "repeated_tokens", "residual_at", "residual_copying", "role_base_rate", "roles_from_scores", "top_heads",
    "without_sink",
]

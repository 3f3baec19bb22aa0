"""Export: saving a pruned model atomically (`saving`, `atomic`) with its model card (`card`), publishing it on the
Hub in one commit (`hub`, `remote_code`), the config marks that keep stock transformers from loading a checkpoint it
would read wrongly (`portable`), and the plan attachment that binds a pruned model's `save_pretrained` and
`push_to_hub` (`attach`)."""

from hf_moe_prune.export.attach import attach_plan
from hf_moe_prune.export.hub import PushToHubError, push_to_hub
from hf_moe_prune.export.saving import save_pruned

__all__ = ["PushToHubError", "attach_plan", "push_to_hub", "save_pruned"]

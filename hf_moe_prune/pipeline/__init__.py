"""The pipeline: a job checked before calibration (`job`), the calibration pass and the decision (`run`, `decide`),
then the model reshaped to the plan (`apply`). Shared by full-load pruning, the quantizer and streaming; the public
verbs that also make the model save itself with its plan are in `hf_moe_prune.api`."""

from hf_moe_prune.pipeline.apply import apply
from hf_moe_prune.pipeline.decide import decide, statistics_needed
from hf_moe_prune.pipeline.job import PruneJob, as_config, calibration_job, default_tokenizer, prepare, tokenizer_at
from hf_moe_prune.pipeline.run import run
from hf_moe_prune.pipeline.statistics import gather

__all__ = [
    "PruneJob",
    "apply",
    "as_config",
    "calibration_job",
    "decide",
    "default_tokenizer",
    "gather",
    "prepare",
    "run",
    "statistics_needed",
    "tokenizer_at",
]

"""The statistics calibration can observe: their names and what each sums. A leaf module, so that methods (which
name what they require), observers and the statistics container share one vocabulary."""

# Statistics the calibration engine can collect per MoE block, all sums over routed (token, expert) pairs, so that
# batches, devices and processes add up:
#   count          number of tokens routed to the expert
#   gate_sum       sum of the gate values the model applied
#   norm_sum       sum of ||f_j(x)||_2, the expert output before gating
#   gate_norm_sum  sum of g_j(x) * ||f_j(x)||_2
#   direction_sum  sum of g_j(x) * ||f_j(x)||_2 * (1 - cos(x, x + g_j(x) f_j(x))): how far the expert turns its input
# and, per intermediate neuron i of expert j (`[E, I]` sums; a_i(x) the neuron's activation, W_d the down projection):
#   neuron_magnitude   sum of |a_i(x)| * ||W_d[:, i]||
#   neuron_projection  sum of a_i(x) * (W_d[:, i] . f_j(x) / ||f_j(x)||)
STATISTICS = (
    "count",
    "gate_sum",
    "norm_sum",
    "gate_norm_sum",
    "direction_sum",
    "neuron_magnitude",
    "neuron_projection",
)
NEURON_STATISTICS = frozenset({"neuron_magnitude", "neuron_projection"})
# Need the experts' outputs, not only the routing.
OUTPUT_STATISTICS = frozenset({"norm_sum", "gate_norm_sum", "direction_sum"}) | NEURON_STATISTICS

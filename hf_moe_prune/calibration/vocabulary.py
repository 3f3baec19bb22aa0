"""The statistics calibration can observe: their names and what each sums. A leaf module, so that methods (which
name what they require), observers and the statistics container share one vocabulary."""

# Statistics the calibration engine can collect per MoE block, all sums over routed (token, expert) pairs, so that
# batches, devices and processes add up:
#   count          number of tokens routed to the expert
#   gate_sum       sum of the gate values the model applied
#   norm_sum       sum of ||f_j(x)||_2, the expert output before gating
#   gate_norm_sum  sum of g_j(x) * ||f_j(x)||_2
#   direction_sum  sum of g_j(x) * ||f_j(x)||_2 * (1 - cos(x, x + g_j(x) f_j(x))): how far the expert turns its input
# per intermediate neuron i of expert j (`[E, I]` sums; a_i(x) the neuron's activation, W_d the down projection):
#   neuron_magnitude   sum of |a_i(x)| * ||W_d[:, i]||
#   neuron_projection  sum of a_i(x) * (W_d[:, i] . f_j(x) / ||f_j(x)||)
# and per pair (i, j) of experts both in a token's top-k (`[E, E]` sums over the tokens x whose top-k holds i and j,
# symmetric; strictly over pairs of top-k slots, so the diagonal (i, i) sums over the tokens routed to i):
#   pair_count     number of such tokens (diagonal: count)
#   pair_norm_sum  sum of g_i(x) ||f_i(x)|| * g_j(x) ||f_j(x)|| (diagonal: sum of g_i(x)^2 ||f_i(x)||^2)
#   pair_dot_sum   sum of <g_i(x) f_i(x), g_j(x) f_j(x)> (diagonal: sum of g_i(x)^2 ||f_i(x)||^2), so that for the
#                  indicator b of a set R of experts, b^T (pair_dot_sum) b = sum_x ||sum_{j in R, routed} g_j f_j||^2
STATISTICS = (
    "count",
    "gate_sum",
    "norm_sum",
    "gate_norm_sum",
    "direction_sum",
    "neuron_magnitude",
    "neuron_projection",
    "pair_count",
    "pair_norm_sum",
    "pair_dot_sum",
)
NEURON_STATISTICS = frozenset({"neuron_magnitude", "neuron_projection"})
PAIR_STATISTICS = frozenset({"pair_count", "pair_norm_sum", "pair_dot_sum"})
# Need the experts' outputs, not only the routing (`pair_count` needs the routing only).
OUTPUT_STATISTICS = (
    frozenset({"norm_sum", "gate_norm_sum", "direction_sum", "pair_norm_sum", "pair_dot_sum"}) | NEURON_STATISTICS
)

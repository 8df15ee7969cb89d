"""Domain Adaptive Transfer (DAT; Ngiam et al. 2018, paper 003 sections 3.3, 4.1, 4.3, Table 6):
a specialist pre-trained on upstream data re-sampled to look like the target task, then
fine-tuned on the task. It is the expensive competitor to expert selection: every new task pays
for a fresh upstream pre-training.

The recipe
----------
1. **Importance weights** (section 3.3). Under the assumption ``P_s(x|y) ~ P_t(x|y)`` the target
   loss is the source loss re-weighted by ``w(y) = p_t(y) / p_s(y)``. ``p_s`` is the upstream
   label frequency; ``p_t`` is unknown (the target task has other labels), so the generic
   upstream model B predicts upstream labels on the target's images (their target labels are never
   used) and ``p_t`` is the mean prediction. The softmax is tempered (logits divided by 2.0, the
   paper's "smooth prior"), which flattens ``p_t`` so that labels B finds only weakly still count.
2. **Sampling** (sections 4.1, 4.3). Rather than weighting the loss (batches of mostly tiny weights,
   wasted compute), a pre-training set of a chosen size is drawn from upstream: the *same
   distribution matcher* samples with replacement at a rate proportional to each example's weight;
   the *elastic distribution matcher* samples without replacement (see :func:`elastic_sample`).
3. **Specialist pre-training** from scratch (the paper) or, cheaper, from B, through the one
   training loop :func:`expertise.train.fit` with B's loss (sigmoid over every hierarchy node),
   then the standard downstream fine-tune (:func:`expertise.transfer.finetune.finetune_and_test`).

Which label gives a multi-label upstream image its weight
----------------------------------------------------------
Our upstream images are multi-label, but every image has exactly one leaf and its other labels are
that leaf's ancestors: the label *set* of an image is a function of its leaf. So the paper's ``y``
(the image's label) is the leaf, and an image is weighted by its leaf: ``w(image) = w(leaf)``.
This keeps the paper's identity exact: the sampled leaf distribution is ``p_s(leaf) w(leaf) =
p_t(leaf)``, and every ancestor's share follows (a node's sampled share is the sum of ``p_t`` over
its descendant leaves), so coarse labels are matched as well, without being counted twice.
Weighting by ancestors instead would need a rule to combine several weights per image (mean, max,
product), each of which breaks that identity, and an ancestor's weight is only an average of its
leaves' weights, so it would blur exactly the fine-grained preference DAT is after. For the same
reason ``p_t`` is a softmax over B's *leaf* logits (leaves are mutually exclusive, so a categorical
distribution is the right model), not over all label nodes.

Leaves without an upstream image (possible on small upstream sets) cannot be sampled; the driver
leaves them out of the softmax, so ``p_t`` is a distribution over the leaves one can sample.

Everything about the weights is float64 numpy; the samplers are deterministic given their seed.

Modules: :mod:`.weights` (1), :mod:`.samplers` (2), :mod:`.pretrain` (3, the driver :func:`run_dat`).
"""

from expertise.dat.pretrain import INITS, DATConfig, DATResult, cost_ratios, dat_record, leaf_logits, run_dat
from expertise.dat.samplers import (SAMPLER_FUNCTIONS, SAMPLERS, elastic_allocation, elastic_sample,
                                    same_distribution_sample, sampled_label_distribution, unique_examples)
from expertise.dat.weights import (DEFAULT_TEMPERATURE, WEIGHTINGS, importance_weights, selected_labels,
                                   source_label_distribution, target_label_distribution, weights_for)

__all__ = ["DATConfig", "DATResult", "DEFAULT_TEMPERATURE", "INITS", "SAMPLERS", "SAMPLER_FUNCTIONS", "WEIGHTINGS", "cost_ratios",
           "dat_record", "elastic_allocation", "elastic_sample", "importance_weights", "leaf_logits", "run_dat",
           "same_distribution_sample", "sampled_label_distribution", "selected_labels", "source_label_distribution",
           "target_label_distribution", "unique_examples", "weights_for"]

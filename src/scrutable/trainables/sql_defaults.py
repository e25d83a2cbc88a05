"""RLPrompt's reference defaults (`sql.py` cites where each comes from), torch-free: the
training config names them, and a sweep's driver builds configs without importing torch."""

from enum import StrEnum

# LMAdaptorModelConfig.hidden_size in rlprompt/models/model_helpers.py.
MLP_HIDDEN_SIZE = 2048
# LMAdaptorModel._init_weights: a near-zero MLP output makes the first policy almost
# uniform over the vocabulary (lm_head of a ~constant vector), i.e. maximal exploration.
MLP_INIT_GAIN = 1e-4
MLP_INIT_BIAS = -1e-4
# SQLModuleConfig: target_update_method="polyak", target_learning_rate=0.001, applied
# once before every optimisation step.
POLYAK_RATE = 1e-3
# fsc_reward.py / tst_reward.py: (r - mean) / (std + 1e-4); the epsilon is added to the
# standard deviation, not the variance.
ZSCORE_EPS = 1e-4


class SoftQImpl(StrEnum):
    """Names of the reference's sparse-reward SQL losses (`sql_loss_impl`)."""

    V1 = "v1"
    V2 = "v2"
    V3 = "v3"
    V2_V2R = "v2_v2r"
    V3_V3R = "v3_v3r"
    V2_V2R_V3_V3R = "v2_v2r_v3_v3r"


DEFAULT_IMPL = SoftQImpl.V2_V2R_V3_V3R  # SQLModuleConfig.sql_loss_impl

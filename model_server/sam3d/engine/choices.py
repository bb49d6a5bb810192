"""The engine's named options, importable without torch: the command-line parsers offer them
as choices and the engine checks them, from this one list each."""

CORRECTIONS = ("auto", "local", "global", "2d")  # how a correction click changes the mask (Session)
CLICK_PATHWAYS = ("3d", "search", "gated")  # who answers an object's first click (Session)
# Who answers a box prompt (Predictor): "3d" the 3D model (box corners as prompt points), "2d"
# LiteMedSAM's trained 2D box pathway slice by slice (slice_pathway.py); "auto" = "2d" for models
# built on LiteMedSAM (its weights are then installed), else "3d".
BOX_PATHWAYS = ("auto", "2d", "3d")
# The 2D pathway's TinyViT (Predictor): "bf16" under bfloat16 autocast (about 2x faster on a CPU
# with bf16 instructions, as accurate in distribution: docs/BENCHMARKS.md, "The 2D pathway in
# bfloat16"), "fp32"; "auto" = bf16 where the CPU has bf16 instructions (elsewhere oneDNN emulates
# them, slower), else fp32 (a GPU included: it runs on the model's device).
SLICE_PRECISIONS = ("auto", "fp32", "bf16")
SLICE_PRECISION_HELP = ("the 2D pathway's image encoder (boxes, corrections after them, first-click searches): "
                        "bf16 = bfloat16, about 2x faster on a CPU with bf16 instructions and as accurate on the "
                        "data measured (not bit-identical to fp32); fp32; auto (default) = bf16 where the CPU has "
                        "bf16 instructions, else fp32 (on a GPU too)")

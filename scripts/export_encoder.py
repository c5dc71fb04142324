"""Export a pretrained encoder for torchvision and timm: what the export stage
writes (pipeline.stages=[pretrain,export,...]), for a run that has finished.

    python scripts/export_encoder.py RUN_DIR                 # RUN_DIR/pretrain/encoder.pt -> RUN_DIR/export/
    python scripts/export_encoder.py path/to/encoder.pt      # -> <its run folder>/export/
    python scripts/export_encoder.py RUN_DIR --out DIR       # -> DIR/

Writes <arch>_torchvision.pt and <arch>_timm.pt (plain state dicts of the
whole backbone, no fc; see ssl_runner/backbone_export.py) and prints the
Python lines that load each. A backbone that torchvision and timm do not
build (resnet_tiny, nin, any width other than 1) is refused with exit status 2.
"""

import argparse
import sys
from pathlib import Path
from typing import Optional, Tuple

from ssl_runner.backbone_export import EXPORT_STAGE, export_backbone
from ssl_runner.encoder import load_encoder
from ssl_runner.errors import EXIT_USER_ERROR, UserError


def locate(source: Path, out: Optional[Path]) -> Tuple[Path, Path]:
    """(encoder file, output folder) for a run folder or an encoder file."""
    if source.is_dir():
        encoder = source / "pretrain" / "encoder.pt"
        if not encoder.is_file():
            raise UserError(f"{source} has no pretrain/encoder.pt: it is not the folder of a run whose pretrain "
                            "stage finished. Pass a run folder (hydra.run.dir) or the encoder.pt itself.")
        run_dir = source
    else:
        encoder = source  # load_encoder names a missing or unreadable file
        # <run>/pretrain/encoder.pt exports into <run>/export/, as the stage does.
        run_dir = source.parent.parent if source.parent.name == "pretrain" else source.parent
    return encoder, (out if out is not None else run_dir / EXPORT_STAGE)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, metavar="RUN_DIR_OR_ENCODER_PT",
                        help="a run folder (its pretrain/encoder.pt) or an encoder.pt")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/export)")
    args = parser.parse_args(argv)
    try:
        encoder_path, out = locate(args.source, args.out)
        encoder = load_encoder(encoder_path)
        # Absolute paths in the load lines: they work from any folder.
        result = export_backbone(encoder.backbone, out.resolve(), f"the encoder {encoder_path}")
    except UserError as err:
        print(err.paragraph(), file=sys.stderr)
        return EXIT_USER_ERROR
    stem = "CIFAR stem (3x3 stride-1 conv1, no max-pool)" if result["cifar_stem"] else "ImageNet stem"
    print(f"{result['arch']}, {stem}, {result['feature_dim']}-d features, from {encoder_path} "
          f"({encoder.method}):")
    for fmt, path in result["files"].items():
        print(f"\nwrote {path}; load it with:\n")
        print("\n".join(f"    {line}" for line in result["load"][fmt]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

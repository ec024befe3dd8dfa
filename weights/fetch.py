"""Download weights into the weights cache:

    python -m weights.fetch [MODEL_ID] [--variant fp16]     SD weights (default: SD1.5)
    python -m weights.fetch --ip-adapter h94/IP-Adapter    IP-Adapter-Plus and its CLIP image encoder

(The DragBench-SR/DR data: python -m regiondrag.dragbench.fetch [DIR].)
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from .errors import WeightsError
from .hub import COMPONENTS, DEFAULT_MODEL, cache_dir, download, model_components
from .ip_adapter import IP_ADAPTER_FILES, IP_ADAPTER_REPO, fetch_ip_adapter

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weights.fetch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_id", nargs="?", help=f"hub model id of SD weights (default {DEFAULT_MODEL}, "
                                                    f"unless only --ip-adapter is given)")
    parser.add_argument("--variant", help='weights variant, e.g. "fp16" (half the download)')
    parser.add_argument("--components", nargs="+", choices=COMPONENTS,
                        help="default: all an edit needs (SDXL ids: text_encoder_2 and tokenizer_2 too)")
    parser.add_argument("--ip-adapter", metavar="REPO",
                        help=f"also fetch IP-Adapter-Plus from REPO, laid out like {IP_ADAPTER_REPO} (~2.5 GB)")
    parser.add_argument("--ip-backbone", choices=IP_ADAPTER_FILES, default="sd15",
                        help="which backbone's IP-Adapter-Plus to fetch (default %(default)s)")
    args = parser.parse_args(argv)
    model_id = args.model_id or (None if args.ip_adapter else DEFAULT_MODEL)
    try:
        if model_id:
            components = args.components or model_components(model_id)
            print(f"fetching {model_id} ({', '.join(components)}) into {cache_dir()}")
            print(download(model_id, components, args.variant))
        if args.ip_adapter:
            print(f"fetching {args.ip_adapter} ({IP_ADAPTER_FILES[args.ip_backbone]} and the image encoder) "
                  f"into {cache_dir()}")
            print(fetch_ip_adapter(args.ip_adapter, args.ip_backbone))
    except WeightsError as e:
        parser.exit(1, f"error: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

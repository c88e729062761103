"""Print which operations of a target's forward depend on what is fed with them (dream.target.diagnose,
dream.bench.wholepath).

    HF_HUB_OFFLINE=1 python scripts/diagnose_exactness.py [--target smolvlm-135m] [--dtype bf16]
        [--image FILE --prompt TEXT] [--max-new-tokens 32] [--no-model]

Without --image / --prompt it uses the first held-out prompt. --no-model skips the whole-path section
(which loads the stock model a second time and runs generate()).
"""

from __future__ import annotations

import argparse

from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from dream.bench.prompts import HELDOUT_PROMPTS, read_prompts
from dream.bench.wholepath import diagnose_with_model
from dream.chat import user_messages
from dream.images import read_image
from dream.settings import DTYPES, torch_dtype
from dream.target.diagnose import format_findings
from dream.target.loading import load_target, resolve_target_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smolvlm-135m", help="zoo name or checkpoint directory")
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--image", help="image file (with --prompt)")
    parser.add_argument("--prompt", help="user text (with --image, or alone for a text-only target)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--no-model", action="store_true", help="skip the comparison with generate()")
    args = parser.parse_args()

    path = resolve_target_path(args.target)
    target = load_target(path, args.dtype, "cpu")
    if args.prompt is None:
        record = read_prompts(HELDOUT_PROMPTS, limit=1)[0]
        prompt, images = record.prompt, [record.image]
    else:
        prompt, images = args.prompt, [read_image(args.image)] if args.image else []
    inputs = target.build_inputs(user_messages(prompt, bool(images)), images)
    stock = None
    if not args.no_model:
        auto = AutoModelForImageTextToText if target.image_token_id is not None else AutoModelForCausalLM
        stock = auto.from_pretrained(path, dtype=torch_dtype(args.dtype)).eval()
    print(format_findings(diagnose_with_model(target, inputs, stock, args.max_new_tokens)))


if __name__ == "__main__":
    main()

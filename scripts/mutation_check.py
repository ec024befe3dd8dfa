"""Plant each of the method's classic bugs in a copy of the repository and check the test suite catches it.

    python scripts/mutation_check.py            # all mutations; exit 1 if any survives
    python scripts/mutation_check.py --list
    python scripts/mutation_check.py tests/test_mechanisms.py   # only these tests (a quicker look)

Each mutation is a one-place textual change (a deliberate bug an ablation could introduce unnoticed).
The fast suite runs on the mutated copy with `-x`, the mechanism tests first (pytest collects each test
once), so a caught mutation stops within seconds; a mutation is *caught* when some test fails. A
mutation whose text no longer matches the source fails this check too: update it with the code.
CI runs this script, so these bugs stay caught.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str


MUTATIONS = [
    Mutation("self-attention uses the given keys but its own values", "models/attention.py",
             "out = multihead_attention(self.to_q(x), kv[0], kv[1], self.heads)",
             "out = multihead_attention(self.to_q(x), kv[0], self.to_v(x), self.heads)"),
    Mutation("the mid block ignores its replayed K/V", "models/unet.py",
             "h = attend(self.mid_block.attentions[0], h)",
             "h, mid_kv = self.mid_block.attentions[0](h, context, None, image_prompt)\n"
             "        kv_out.append(mid_kv)"),
    Mutation("handle noise blended with 1 - s instead of sqrt(1 - s^2)", "regiondrag/copy_paste.py",
             "keep = (1 - scale ** 2) ** 0.5 if scale < 1 else 0.0",
             "keep = (1 - scale) if scale < 1 else 0.0"),
    Mutation("CP then Encode without the target's border noise", "regiondrag/pipeline.py",
             "noised = torch.cat([region_border(target, inv.latents[-1].shape[-2:]), handle])",
             "noised = handle"),
]


def copy_tree(dst: Path) -> None:
    """The files git knows (tracked and untracked-not-ignored), as they are in the working tree."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


def run_suite(tree: Path, pytest_args: list[str]) -> int:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    tests = pytest_args or ["tests/test_mechanisms.py", "tests/test_pipeline.py", "tests"]
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "--no-header", "-p", "no:cacheprovider", *tests],
                          cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def check(mutation: Mutation, pytest_args: list[str]) -> str:
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        target = tree / mutation.path
        source = target.read_text()
        if source.count(mutation.old) != 1:
            return f"STALE (its text is no longer in {mutation.path} exactly once: update scripts/mutation_check.py)"
        target.write_text(source.replace(mutation.old, mutation.new))
        code = run_suite(tree, pytest_args)
    return {0: "SURVIVED (every test passed)", 1: "caught"}.get(code, f"BROKEN (pytest exit code {code})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("pytest_args", nargs="*", help="test paths or options for pytest (default: the fast suite)")
    args = parser.parse_args()
    if args.list:
        for m in MUTATIONS:
            print(f"{m.path}: {m.name}")
        return 0
    failed = 0
    for m in MUTATIONS:
        verdict = check(m, args.pytest_args)
        failed += verdict != "caught"
        print(f"mutation check: {verdict:<10} {m.name} ({m.path})", flush=True)
    print(f"mutation check: {len(MUTATIONS) - failed} of {len(MUTATIONS)} mutations caught")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

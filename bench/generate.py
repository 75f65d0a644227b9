"""Member generation: ensembles.generation.Generator against a plain-Python loop.

1000 members, each with one copied 2 KB file and one configured file holding
five tags (;a; ;b; ;c; ;d; ;e;). Cases, interleaved over BENCH_ROUNDS rounds
(median reported), each into a fresh folder:

- generate:   Generator.generate for every member into fresh directories;
- baseline:   mkdir, shutil.copyfile, the template read once, five str.replace, write;
- regenerate: Generator.generate again over the directories of the generate
              pass (each existing directory is renamed aside into the trash,
              deleted later by discard_later, as run_submit does).

Generator also writes flotilla_params.json per member, which the baseline does
not; baseline_with_record_s adds that file to the baseline for reference.
Every timed case starts after os.sync(): on this disk, file creation slows down
several-fold while earlier writes are being flushed, which otherwise makes the
order of the cases decide the figures.
Prints name=value lines; the last is the headline generate_s / baseline_s.
"""

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ensembles.generation import Generator, discard_later  # noqa: E402  (pure: no Django)

MEMBERS = int(os.environ.get("BENCH_MEMBERS", "1000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
TAGS = ["a", "b", "c", "d", "e"]


def params_of(i: int) -> dict:
    return {"a": i, "b": i * 0.5, "c": f"case{i}", "d": i % 7, "e": 1e-3 * i}


def make_sources(root: Path) -> tuple[Path, Path]:
    copied = root / "data.bin"
    copied.write_bytes(os.urandom(2048))
    template = root / "input.cfg"
    lines = [f"# configuration file line {n}: nothing to substitute here" for n in range(20)]
    lines.insert(5, "a = ;a; ; b = ;b; ; c = ;c; ; d = ;d; ; e = ;e;")  # the spec's `;a; ;b; ;c; ;d; ;e;`
    template.write_text("\n".join(lines) + "\n")
    return copied, template


def run_generator(generator: Generator, root: Path) -> float:
    trash: list[Path] = []
    os.sync()  # start every case with no dirty pages left by the one before
    start = time.perf_counter()
    for i in range(MEMBERS):
        name = f"ens_{i}"
        generator.generate(root / name, name, params_of(i), trash=trash)
    thread = discard_later(trash)  # as run_submit does: deletion goes on in the background
    elapsed = time.perf_counter() - start
    if thread is not None:
        thread.join(timeout=120)
    return elapsed


def run_baseline(copied: Path, template: Path, root: Path, *, record: bool = False) -> float:
    os.sync()
    start = time.perf_counter()
    text = template.read_text()
    for i in range(MEMBERS):
        name = f"ens_{i}"
        directory = root / name
        os.mkdir(directory)
        shutil.copyfile(copied, directory / copied.name)
        params = params_of(i)
        rendered = text
        for tag in TAGS:
            rendered = rendered.replace(f";{tag};", str(params[tag]))
        with open(directory / template.name, "w") as out:
            out.write(rendered)
        if record:
            with open(directory / "flotilla_params.json", "w") as out:
                json.dump({"name": name, "params": params, "configured": {template.name: params}}, out, indent=1)
    return time.perf_counter() - start


def main():
    work = Path(tempfile.mkdtemp(prefix="flotilla-bench-generate-"))
    try:
        sources = work / "sources"
        sources.mkdir()
        copied, template = make_sources(sources)
        generator = Generator(copy=[copied], configure=[template], roots=[sources])
        # Check the outputs agree once before timing.
        check_gen, check_base = work / "check-gen", work / "check-base"
        check_gen.mkdir(), check_base.mkdir()
        generator.generate(check_gen / "ens_3", "ens_3", params_of(3), trash=[])
        text = template.read_text()
        for tag in TAGS:
            text = text.replace(f";{tag};", str(params_of(3)[tag]))
        assert (check_gen / "ens_3" / "input.cfg").read_text() == text
        assert (check_gen / "ens_3" / "data.bin").read_bytes() == copied.read_bytes()

        generate, baseline, baseline_record, regenerate = [], [], [], []
        for round_ in range(ROUNDS):
            gen_root, base_root, rec_root = (work / f"{kind}-{round_}" for kind in ("gen", "base", "rec"))
            for root in (gen_root, base_root, rec_root):
                root.mkdir()
            # Alternate the order so neither side always runs on a warmer disk cache.
            if round_ % 2 == 0:
                generate.append(run_generator(generator, gen_root))
                baseline.append(run_baseline(copied, template, base_root))
            else:
                baseline.append(run_baseline(copied, template, base_root))
                generate.append(run_generator(generator, gen_root))
            baseline_record.append(run_baseline(copied, template, rec_root, record=True))
            regenerate.append(run_generator(generator, gen_root))
            for root in (gen_root, base_root, rec_root):
                shutil.rmtree(root, ignore_errors=True)

        generate_s = statistics.median(generate)
        baseline_s = statistics.median(baseline)
        print(f"members={MEMBERS}")
        print(f"rounds={ROUNDS}")
        print(f"generate_s={generate_s:.4f}")
        print(f"baseline_s={baseline_s:.4f}")
        print(f"baseline_with_record_s={statistics.median(baseline_record):.4f}")
        print(f"regenerate_s={statistics.median(regenerate):.4f}")
        print(f"regenerate_ratio={statistics.median(regenerate) / baseline_s:.2f}")
        print(f"generate_ratio={generate_s / baseline_s:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

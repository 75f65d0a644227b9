"""1-D heat diffusion: a small real simulation for Flotilla's demo.

Reads ``input.cfg`` (``key = value`` lines: alpha, nx, steps, seconds), solves
u_t = alpha * u_xx on [0, 1] with fixed ends (explicit finite differences),
prints progress lines for a few seconds, and writes ``results.json``.
"""

import argparse
import json
import sys
import time

import numpy as np


def read_config(path):
    config = {}
    with open(path) as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if "=" in line:
                key, value = (part.strip() for part in line.split("=", 1))
                config[key] = value
    return config


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default="input.cfg")
    parser.add_argument("--results", default="results.json")
    args = parser.parse_args()
    config = read_config(args.input)
    alpha = float(config.get("alpha", 0.1))
    nx = int(config.get("nx", 50))
    steps = int(config.get("steps", 200))
    seconds = float(config.get("seconds", 3))
    if not (alpha > 0 and nx >= 3 and steps >= 1):
        print(f"invalid input: alpha={alpha} nx={nx} steps={steps}", file=sys.stderr)
        return 2

    dx = 1.0 / (nx - 1)
    dt = 0.4 * dx * dx / alpha  # stable explicit step
    x = np.linspace(0.0, 1.0, nx)
    u = np.exp(-((x - 0.5) ** 2) / 0.01)  # a hot spot in the middle
    initial_energy = float(u.sum() * dx)
    pause = seconds / steps
    start = time.time()
    for step in range(1, steps + 1):
        u[1:-1] += alpha * dt / dx**2 * (u[2:] - 2 * u[1:-1] + u[:-2])
        if step % max(1, steps // 10) == 0:
            print(f"step {step}/{steps}  t={step * dt:.5f}  max={u.max():.5f}", flush=True)
        time.sleep(pause)
    results = {
        "max_temperature": float(u.max()),
        "energy": float(u.sum() * dx),
        "energy_lost": initial_energy - float(u.sum() * dx),
        "simulated_time": steps * dt,
        "wall_seconds": time.time() - start,
    }
    with open(args.results, "w") as out:
        json.dump(results, out, indent=1)
    print(f"done: max temperature {results['max_temperature']:.5f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Votes saved by informative pair choice (harmony_core.arena.sampling) against a uniform one,
simulated with known Bradley-Terry strengths; the table in docs/studio.md comes from this.

    python scripts/simulate_sampling.py --runs 30
    python scripts/simulate_sampling.py --runs 12 --settled-after 10
"""

import argparse

from harmony_core.arena import sampling

SCENARIOS = {
    "4 methods, evenly spaced (log-strengths -0.6 .. 0.6)": [-0.6, -0.2, 0.2, 0.6],
    "6 methods, evenly spaced (-1 .. 1)": [-1.0, -0.6, -0.2, 0.2, 0.6, 1.0],
    "6 methods, one clear loser, five close (-2, -0.4 .. 0.4)": [-2.0, -0.4, -0.2, 0.0, 0.2, 0.4],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="seeds per scenario and policy (medians reported)")
    parser.add_argument("--settled-after", type=int, default=sampling.SETTLED_AFTER,
                        help="comparisons a separated pair needs before it stops getting votes")
    args = parser.parse_args()
    sampling.SETTLED_AFTER = args.settled_after
    print("| scenario | uniform: votes | right | informative: votes | right | saved |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, strengths in SCENARIOS.items():
        r = sampling.compare(strengths, args.runs)
        print(f"| {name} | {r['uniform votes']:.0f} | {r['uniform right %']:.0f}% | {r['informative votes']:.0f} | "
              f"{r['informative right %']:.0f}% | {r['saved %']:.0f}% |")


if __name__ == "__main__":
    main()

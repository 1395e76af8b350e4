#!/usr/bin/env python3
"""Write a SYNTHETIC medical-records dataset for the teaching notebooks (notebooks/04-confidential-analytics).

Every value is drawn from a seeded random generator: no real person is described. The records look sensitive on
purpose (names, ages, blood pressure, HbA1c, diabetes, smoking) so the notebook can show what stays inside the
enclave and what leaves it.

Writes, into --out (created if needed):
  patients.npy   a numpy structured array (no pickled objects: loads with allow_pickle=False)
  patients.csv   the same records as CSV, for looking at with a text editor

Usage: python notebooks/make_synthetic_records.py [--out DIR] [--patients N] [--seed S]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from pathlib import Path

import numpy as np

DTYPE = np.dtype([
    ("patient_id", "U8"),
    ("name", "U24"),
    ("age", "i2"),
    ("sex", "U1"),
    ("region", "U10"),
    ("bmi", "f4"),
    ("systolic_bp", "f4"),
    ("hba1c", "f4"),
    ("smoker", "?"),
])
#: HbA1c (%) at or above which a record counts as diabetic (the usual clinical threshold).
DIABETES_HBA1C = 6.5

#: Common given names and surnames, combined at random: any match with a real person is a coincidence.
_FIRST = ("Alex", "Sam", "Maria", "Jan", "Noor", "Lena", "Omar", "Mei", "Ines", "Tomas", "Aisha", "Luca", "Yuki",
          "Priya", "Jonas", "Eva", "Kofi", "Sara", "Ivan", "Rosa")
_LAST = ("Smith", "Garcia", "Muller", "Rossi", "Novak", "Kim", "Silva", "Jensen", "Khan", "Dubois", "Tanaka",
         "Nowak", "Costa", "Berg", "Okafor", "Larsen", "Meyer", "Ivanova", "Haddad", "Moreau")
_REGIONS = ("North", "South", "East", "West", "Central")


def make_records(n: int, seed: int) -> np.ndarray:
    """``n`` synthetic patients, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    rec = np.zeros(n, dtype=DTYPE)
    rec["patient_id"] = [f"P{i:07d}" for i in range(1, n + 1)]
    first = rng.choice(_FIRST, n)
    last = rng.choice(_LAST, n)
    rec["name"] = [f"{f} {s}" for f, s in zip(first, last, strict=True)]
    age = np.clip(rng.normal(52, 17, n), 18, 90).round()
    rec["age"] = age
    rec["sex"] = rng.choice(np.array(["F", "M"]), n)
    rec["region"] = rng.choice(_REGIONS, n, p=(0.22, 0.18, 0.2, 0.25, 0.15))
    smoker = rng.random(n) < 0.21
    rec["smoker"] = smoker
    bmi = np.clip(rng.normal(26.5, 4.5, n) + 0.03 * (age - 50), 15, 55)
    rec["bmi"] = bmi.round(1)
    rec["systolic_bp"] = np.clip(rng.normal(118, 14, n) + 0.45 * (age - 50) + 0.8 * (bmi - 26) + 4 * smoker,
                                 85, 220).round()
    # HbA1c rises with age and BMI; a right-skewed tail makes about one in six diabetic
    hba1c = 4.6 + 0.014 * (age - 18) + 0.05 * (bmi - 22) + 0.15 * smoker + rng.gamma(2.0, 0.28, n)
    rec["hba1c"] = np.clip(hba1c, 4.0, 14.0).round(1)
    return rec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("synthetic-data"), help="output directory")
    parser.add_argument("--patients", type=int, default=20_000, help="number of records")
    parser.add_argument("--seed", type=int, default=2024, help="random seed (same seed, same records)")
    args = parser.parse_args(argv)
    if args.patients < 1:
        parser.error("--patients must be at least 1")
    rec = make_records(args.patients, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    npy = args.out / "patients.npy"
    np.save(npy, rec, allow_pickle=False)
    csv_path = args.out / "patients.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(DTYPE.names)
        for row in rec.tolist():
            writer.writerow([round(v, 1) if isinstance(v, float) else v for v in row])
    for path in (npy, csv_path):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"wrote {path} ({path.stat().st_size} bytes, sha256 {digest[:16]}…)")
    print(f"{args.patients} synthetic patients, seed {args.seed}; no real person is described")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Claimed (published) speedups beside measured ones: hand-computed crossing times, claims filtered to the pairs
measured, the two never in one table."""
from __future__ import annotations

import pandas as pd

from bench.records import load_results
from reports.build import build
from reports.claims import claims, claims_section
from reports.groups import panels, run_table
from tests.test_speedup import write_curve

CLAIMS_CSV = """source,confidence,model,iters,reward,metric,eval_set,value,note
paper A,exact,AWM,,,speedup_vs_flowgrpo,,24,up to
paper B,read-off-plot,DiffusionNFT,,geneval,speedup_vs_flowgrpo,,25,GPU-hours ratio
paper B,read-off-plot,DiffusionNFT,,ocr,speedup_vs_flowgrpo,,24,GPU-hours ratio
paper C,exact,DGPO,,,speedup_vs_flowgrpo,,20,
paper C,exact,DGPO,,geneval,geneval,GenEval,0.97,
"""


def store(root):
    # FlowGRPO: final (0.42 + 0.40) / 2 = 0.41; seed 0 reaches it at 400 + 0.07 / 0.08 * 400 = 750 s, seed 1 never
    # (censored at 900 s). AWM reaches 0.41 at 0.11 / 0.20 * 100 = 55 s and 165 s; NFT (one seed) at 110 s.
    write_curve(root, "fg0", "flowgrpo", 0, [(0, 0.30), (400, 0.34), (800, 0.42)])
    write_curve(root, "fg1", "flowgrpo", 1, [(0, 0.30), (300, 0.35), (900, 0.40)])
    write_curve(root, "awm0", "awm", 0, [(0, 0.30), (100, 0.50)])
    write_curve(root, "awm1", "awm", 1, [(0, 0.30), (300, 0.50)])
    write_curve(root, "nft0", "nft", 0, [(0, 0.30), (100, 0.40), (200, 0.50)])


def published(tmp_path):
    path = tmp_path / "published"
    path.mkdir()
    (path / "claims.csv").write_text(CLAIMS_CSV)
    return pd.read_csv(path / "claims.csv"), path


def test_claims_are_the_speedup_rows_with_registry_names(tmp_path):
    frame, _ = published(tmp_path)
    said = claims(frame)
    assert said[["method", "vs", "reward"]].values.tolist() == [
        ["awm", "flowgrpo", "any task"], ["nft", "flowgrpo", "geneval"], ["nft", "flowgrpo", "ocr"],
        ["dgpo", "flowgrpo", "any task"]]
    assert said["claimed"].tolist() == ["24x (up to)", "25x (GPU-hours ratio)", "24x (GPU-hours ratio)", "20x"]


def test_measured_rows_at_the_baseline_final_and_claims_beside_them(tmp_path):
    store(tmp_path / "results")
    frame, _ = published(tmp_path)
    df = load_results(tmp_path / "results")
    text = "\n".join(claims_section(df, panels(df, run_table(df, tmp_path / "results")), frame, n_boot=500))
    measured, claimed = text.split("Claimed (the papers")
    rows = {line.split("|")[1].strip() + " vs " + line.split("|")[2].strip(): line
            for line in measured.splitlines() if line.startswith("| ") and "final =" in line}
    awm_fg = next(v for k, v in rows.items() if k.startswith("awm") and "flowgrpo" in k)
    # FlowGRPO: (750 + 900) / 2 = 825 s, censored; AWM (55 + 165) / 2 = 110 s: a lower bound of 825 / 110 = 7.5x
    assert "flowgrpo" in awm_fg and "= 0.410" in awm_fg and "| 110 s |" in awm_fg
    assert "> 14 min (1/2 seeds reached)" in awm_fg and "| > 7.5x [" in awm_fg
    awm_nft = next(v for k, v in rows.items() if k.startswith("awm") and "nft" in k.split(" vs ")[1])
    # NFT's final 0.50: AWM at 100 s and 300 s (mean 200 s), NFT's one seed at 200 s: 1.0x, no interval
    assert "= 0.500" in awm_nft and "| 200 s | 200 s | 1.0x (1 seed: no CI) |" in awm_nft
    nft_fg = next(v for k, v in rows.items() if k.startswith("nft"))
    assert "| 110 s |" in nft_fg and "> 7.5x" in nft_fg  # 825 / 110
    assert not any(k.startswith("flowgrpo") for k in rows)  # FlowGRPO is never the method compared
    # claims: only the measured pairs, in the measured table's order (awm before nft), never DGPO's
    lines = [line for line in claimed.splitlines() if line.startswith("| ") and "x" in line.split("|")[4]]
    assert [line.split("|")[1].strip() for line in lines] == ["awm", "nft"]
    assert "dgpo" not in claimed and "24x (up to)" in claimed and "24x" not in measured
    assert "| ocr |" not in claimed  # the panel is GenEval: NFT's OCR claim is left out


def test_the_report_carries_both_tables_in_the_default_section(tmp_path):
    store(tmp_path / "results")
    _, folder = published(tmp_path)
    text = build(tmp_path / "results", tmp_path / "out", n_boot=50, published_dir=folder).read_text()
    default = text.split("## Default comparison")[1].split("## Published numbers")[0]
    assert "### Claimed vs measured speedup" in default and "25x (GPU-hours ratio)" in default


def test_measured_row_uses_the_baseline_best_where_it_declines(tmp_path):
    # FlowGRPO (one seed) peaks at 0.46 at 200 s and ends at 0.32: its final is below its start, its best is the
    # papers' "FlowGRPO final". AWM reaches 0.46 at 0.16 / 0.20 * 100 = 80 s: 200 / 80 = 2.5x.
    root = tmp_path / "results"
    write_curve(root, "fg0", "flowgrpo", 0, [(0, 0.40), (100, 0.42), (200, 0.46), (300, 0.32)])
    write_curve(root, "awm0", "awm", 0, [(0, 0.30), (100, 0.50)])
    frame, _ = published(tmp_path)
    df = load_results(root)
    measured = "\n".join(claims_section(df, panels(df, run_table(df, root)), frame,
                                        n_boot=100)).split("Claimed (the")[0]
    row = next(line for line in measured.splitlines() if line.startswith("| awm"))
    assert "flowgrpo (CFG 4.5) best = 0.460" in row and "| 80 s | 200 s | 2.5x (1 seed: no CI) |" in row

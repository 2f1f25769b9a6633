"""Evaluation metrics on real data (pbmc68k_reduced with a cluster-derived prediction)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellreasoner.cli import main
from cellreasoner.errors import InputError
from cellreasoner.evaluation import (
    LEVELS,
    EvaluationResult,
    evaluate,
    macro_f1,
    read_results,
    score_adata,
    score_pair,
)


def _annotate_by_cluster(adata, key="cellreasoner_label"):
    """A real prediction: each louvain cluster gets its majority bulk label."""
    majority = adata.obs.groupby("louvain", observed=True)["bulk_labels"].agg(
        lambda s: s.value_counts().index[0]
    )
    adata.obs[key] = adata.obs["louvain"].map(majority).astype(str)
    return adata


@pytest.fixture
def annotated(pbmc68k):
    adata = _annotate_by_cluster(pbmc68k)
    adata.obs["cellreasoner_confidence"] = 0.9
    adata.uns["cellreasoner"] = {"model": "cluster-majority", "backend": "test-data",
                                 "mode": "cluster"}
    return adata


def _result_csv(adata, path, pred, drop_first=0):
    """A result CSV in the upstream-first layout of ``cellreasoner annotate``."""
    obs = adata.obs.iloc[drop_first:]
    df = pd.DataFrame({
        "cell_name": obs.index,
        "response": [f"The cell type is {p}." for p in pred[drop_first:]],
        "labels": obs["bulk_labels"].astype(str).to_numpy(),
        "label": pred[drop_first:],
        "confidence": 0.5,
    })
    df.to_csv(path, index=False)
    return path


def test_metrics_match_scorer_and_counts(annotated):
    ev = evaluate(annotated, truth="bulk_labels")
    assert isinstance(ev, EvaluationResult)
    assert ev.runs == ["cluster-majority"]
    s = ev.summary.iloc[0]
    truth = annotated.obs["bulk_labels"].astype(str).to_numpy()
    pred = annotated.obs["cellreasoner_label"].to_numpy()
    expected = np.array([score_pair(t, p) for t, p in zip(truth, pred, strict=True)])
    pc = ev.per_cell.set_index("cell").loc[annotated.obs_names]
    np.testing.assert_allclose(pc["score"].to_numpy(), expected)
    assert s["n_cells"] == 700
    assert s["mean_score"] == pytest.approx(expected.mean())
    assert s["subtype_accuracy"] == pytest.approx(np.mean(expected == 1.0))
    assert s["major_accuracy"] == pytest.approx(np.mean(expected >= 0.5))
    # identical labels are subtype-correct, so subtype accuracy is at least the identity rate
    assert s["subtype_accuracy"] >= np.mean(truth == pred) - 1e-12
    assert s["exact_cl_accuracy"] <= s["subtype_accuracy"]
    levels = s[["subtype_correct", "major_correct", "partially_correct", "incorrect"]]
    assert levels.sum() == pytest.approx(1.0)
    assert set(pc["level"]) <= set(LEVELS.values())
    assert 0.0 <= s["macro_f1_cl"] <= 1.0


def test_per_label_table(annotated):
    ev = evaluate(annotated, truth="bulk_labels")
    pl = ev.per_label.set_index("truth")
    truth = annotated.obs["bulk_labels"].astype(str)
    assert pl["n"].sum() == 700
    assert pl["n"].to_dict() == truth.value_counts().to_dict()
    table = pd.crosstab(truth, annotated.obs["cellreasoner_label"])
    for label, row in table.iterrows():
        assert pl.loc[label, "top_prediction_fraction"] == pytest.approx(
            row.max() / row.sum())
        assert row[pl.loc[label, "top_prediction"]] == row.max()


def test_macro_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    t = rng.choice(["CL:1", "CL:2", "CL:3", "unmapped"], size=300)
    p = np.where(rng.random(300) < 0.6, t, rng.choice(["CL:1", "CL:4", "unmapped"], size=300))
    assert macro_f1(t, p) == pytest.approx(
        f1_score(t, p, labels=np.unique(t), average="macro"))
    assert macro_f1(["a", "b"], ["a", "b"]) == 1.0
    assert np.isnan(macro_f1([], []))


def test_runs_from_files_are_aligned_and_named(annotated, tmp_path):
    h5 = tmp_path / "run_a.h5ad"
    annotated.write_h5ad(h5)
    # a second model predicts 'CD19+ B' everywhere and misses the first 25 cells
    pred_b = np.array(["CD19+ B"] * annotated.n_obs, dtype=object)
    csv = _result_csv(annotated, tmp_path / "model_b.csv", pred_b, drop_first=25)
    ev = evaluate([h5, csv], truth="bulk_labels")
    assert ev.runs == ["cluster-majority", "model_b"]
    assert set(ev.summary["n_cells"]) == {675}
    assert any("dropped 25 cells" in note for note in ev.notes)
    # the h5ad's UMAP follows the aligned cells; the CSV has none
    cells = ev.per_cell.loc[ev.per_cell["run"] == "cluster-majority", "cell"].to_numpy()
    np.testing.assert_allclose(ev.umap["cluster-majority"], annotated[cells].obsm["X_umap"])
    assert "model_b" not in ev.umap
    b = ev.per_cell[ev.per_cell["run"] == "model_b"]
    truth_is_b = b["truth"] == "CD19+ B"
    assert (b.loc[truth_is_b, "score"] == 1.0).all()
    assert ev.summary.set_index("run").loc["model_b", "subtype_accuracy"] == pytest.approx(
        truth_is_b.mean())
    # the csv's own truth column is called 'labels' (upstream layout); truth can come from there
    ev2 = evaluate(csv, truth="labels", names=["B everywhere"])
    assert ev2.runs == ["B everywhere"]
    assert ev2.summary.iloc[0]["subtype_accuracy"] == pytest.approx(truth_is_b.mean())


def test_several_prediction_columns_in_one_anndata(annotated):
    annotated.obs["always_mono"] = "CD14+ Monocyte"
    ev = evaluate(annotated, truth="bulk_labels", pred=["cellreasoner_label", "always_mono"])
    assert ev.runs == ["cellreasoner_label", "always_mono"]
    by_run = ev.summary.set_index("run")
    assert by_run.loc["always_mono", "subtype_accuracy"] == pytest.approx(
        np.mean(annotated.obs["bulk_labels"] == "CD14+ Monocyte"))
    assert by_run.loc["cellreasoner_label", "mean_score"] > by_run.loc["always_mono",
                                                                         "mean_score"]


def test_missing_truth_column_lists_available(annotated):
    with pytest.raises(InputError, match="truth column 'cell_type' not found.*bulk_labels"):
        evaluate(annotated, truth="cell_type")


def test_bad_inputs(annotated, tmp_path):
    with pytest.raises(InputError, match="2 run names given for 1 runs"):
        evaluate(annotated, truth="bulk_labels", names=["a", "b"])
    with pytest.raises(InputError, match="prediction column 'nope' not found"):
        evaluate(annotated, truth="bulk_labels", pred="nope")
    with pytest.raises(InputError, match="no such file"):
        evaluate(tmp_path / "missing.h5ad", truth="bulk_labels")
    other = annotated[:10].copy()
    other.obs_names = [f"other-{i}" for i in range(10)]
    with pytest.raises(InputError, match="share no cell names"):
        evaluate([annotated, other], truth="bulk_labels")
    bad = tmp_path / "dup.csv"
    pd.DataFrame({"cell_name": ["a", "a"], "label": ["x", "y"], "labels": ["x", "x"]}).to_csv(
        bad, index=False)
    with pytest.raises(InputError, match="cell names are not unique"):
        read_results(bad)


def test_missing_truth_values_are_not_scored(annotated):
    annotated.obs["partial_truth"] = annotated.obs["bulk_labels"].astype(object)
    annotated.obs.iloc[:30, annotated.obs.columns.get_loc("partial_truth")] = np.nan
    ev = evaluate(annotated, truth="partial_truth")
    assert ev.summary.iloc[0]["n_cells"] == 670
    assert any("30 cells have no ground truth" in n for n in ev.notes)


def test_pair_table_overrides_scorer(annotated, shared_data):
    table = pd.read_csv(shared_data / "pair_scores_dev.csv")
    # make every pair our prediction produces 'Incorrect' by a user judgement
    truth = annotated.obs["bulk_labels"].astype(str)
    pairs = pd.DataFrame({"Ground Truth": truth, "Model Prediction":
                          annotated.obs["cellreasoner_label"]}).drop_duplicates()
    judged = pairs.assign(**{"Prediction Evaluation": "Incorrect", "Evaluation Score": 0.0})
    assert set(judged.columns) == set(table.columns)
    ev = evaluate(annotated, truth="bulk_labels", pair_table=judged[table.columns])
    assert ev.summary.iloc[0]["mean_score"] == 0.0


def test_to_dir_writes_tables_and_plots(annotated, tmp_path):
    ev = evaluate(annotated, truth="bulk_labels")
    out = ev.to_dir(tmp_path / "eval")
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics.loc[0, "run"] == "cluster-majority"
    assert metrics.loc[0, "mean_score"] == pytest.approx(ev.summary.loc[0, "mean_score"])
    assert len(pd.read_csv(out / "scores.csv")) == 700
    assert len(pd.read_csv(out / "per_label.csv")) == annotated.obs["bulk_labels"].nunique()
    for name in ("score_violin.png", "score_levels.png", "heatmap_cluster-majority.png",
                 "umap_cluster-majority.png"):
        assert (out / name).stat().st_size > 5000


def test_score_adata_writes_obs(annotated):
    score_adata(annotated, "bulk_labels")
    scores = annotated.obs["cellreasoner_score"].to_numpy()
    assert set(np.unique(scores)) <= set(LEVELS)
    same = (annotated.obs["bulk_labels"].astype(str) == annotated.obs["cellreasoner_label"])
    assert (scores[same.to_numpy()] == 1.0).all()
    assert annotated.obs["cellreasoner_score_level"].iloc[0] == LEVELS[scores[0]]
    assert annotated.uns["cellreasoner_score"]["mean_score"] == pytest.approx(scores.mean())
    copy = score_adata(annotated, "bulk_labels", key_added="s2", copy=True)
    assert "s2" in copy.obs and "s2" not in annotated.obs
    with pytest.raises(InputError, match="prediction column 'missing'"):
        score_adata(annotated, "bulk_labels", pred_key="missing")


def test_cli_evaluate(annotated, tmp_path, capsys):
    h5 = tmp_path / "a.h5ad"
    annotated.write_h5ad(h5)
    csv = _result_csv(annotated, tmp_path / "b.csv",
                      annotated.obs["cellreasoner_label"].to_numpy())
    out = tmp_path / "out"
    rc = main(["evaluate", str(h5), str(csv), "--truth", "bulk_labels", "--names", "A", "B",
               "-o", str(out), "--no-plots"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "A" in printed and "mean_score" in printed
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["run"].tolist() == ["A", "B"]
    # same predictions in both files -> same metrics
    assert metrics.loc[0, "mean_score"] == pytest.approx(metrics.loc[1, "mean_score"])
    rc = main(["evaluate", str(h5), "--truth", "nope"])
    assert rc == 2
    assert "truth column 'nope' not found" in capsys.readouterr().err


def test_hierarchical_macro_f1_credits_more_specific_terms():
    truth = ["T cell"] * 10 + ["B cell"] * 10
    pred = ["CD8-positive, alpha-beta T cell"] * 10 + ["B cell"] * 10
    df = pd.DataFrame({"cell_name": [f"c{i}" for i in range(20)], "labels": truth, "label": pred})
    s = evaluate(df, truth="labels").summary.iloc[0]
    assert s["macro_f1_cl"] == pytest.approx(0.5)  # T cell: 0, B cell: 1
    assert s["macro_f1_cl_hierarchical"] == pytest.approx(1.0)
    # a broader answer is not credited as the specific truth
    s = evaluate(df.assign(labels=pred, label=truth), truth="labels").summary.iloc[0]
    assert s["macro_f1_cl_hierarchical"] == pytest.approx(0.5)


def test_end_to_end_with_the_builtin_annotator(pbmc68k, tmp_path):
    """Real annotate() output (h5ad and CSV) evaluated side by side, then reported."""
    from cellreasoner.annotation import annotate

    cell = pbmc68k.copy()
    res = annotate(cell, "builtin", reasoning=True, use_raw=True, label_key="bulk_labels",
                   progress=False)
    cell.write_h5ad(tmp_path / "cell.h5ad")
    csv = res.to_csv(tmp_path / "cell.csv")
    clus = pbmc68k.copy()
    annotate(clus, "builtin", mode="cluster", by="louvain", reasoning=True, use_raw=True,
             progress=False)
    clus.write_h5ad(tmp_path / "cluster.h5ad")
    ev = evaluate([tmp_path / "cell.h5ad", csv, tmp_path / "cluster.h5ad"], truth="bulk_labels",
                  names=["cell", "cell-csv", "cluster"])
    by_run = ev.summary.set_index("run")
    assert by_run.loc["cell", "model"] == cell.uns["cellreasoner"]["model"]
    # the CSV carries the same labels as the h5ad, so the same metrics
    assert by_run.loc["cell", "mean_score"] == pytest.approx(by_run.loc["cell-csv",
                                                                         "mean_score"])
    assert (by_run["mean_score"] > 0.5).all()
    assert (by_run["macro_f1_cl_hierarchical"] >= by_run["macro_f1_cl"]).all()
    out = tmp_path / "cluster.html"
    assert main(["report", str(tmp_path / "cluster.h5ad"), "-o", str(out), "--truth",
                 "bulk_labels", "--no-plots"]) == 0
    text = out.read_text(encoding="utf-8")
    assert '<section id="clusters">' in text  # cluster mode: browse by provenance 'by'
    data = json.loads(text.split('id="cr-data">')[1].split("</script>")[0])
    cited = clus.obs["cellreasoner_cited_present"].astype(str)
    first = next(i for i, c in enumerate(cited) if c)
    position = data["columns"]["cell"].index(clus.obs_names[first])
    assert data["columns"]["present"][position] == [g.strip() for g in cited.iloc[first].split(",")]


def test_runs_of_the_same_model_are_named_by_mode_and_file(tmp_path):
    import cellreasoner as cr

    for name, mode in (("percell", "cell"), ("clusters", "cluster")):
        adata = cr.datasets.pbmc68k_reduced()
        cr.annotate(adata, mode=mode, by="louvain", progress=False)
        adata.write_h5ad(tmp_path / f"{name}.h5ad")
    ev = cr.evaluate([tmp_path / "percell.h5ad", tmp_path / "clusters.h5ad"],
                     truth="bulk_labels")
    names = list(ev.summary["run"])
    assert len(set(names)) == 2
    assert names[0].endswith("/ percell") and "/ cluster / clusters" in names[1]


def _upstream_csv(path, names, truth, labels):
    """The upstream result CSV (s03.inference): cell_name, response (whole reasoning-mode
    answers: the opening <think> was in the prompt), labels — no label column."""
    responses = [f"Looking at {n}: CD3E, LYZ and MS4A1 are listed; weighing them gives "
                 f"a clear picture.\n</think>\n\n{lab}" for n, lab in zip(names, labels,
                                                                       strict=True)]
    pd.DataFrame({"cell_name": names, "response": responses, "labels": truth}).to_csv(
        path, index=False)
    return path


def test_upstream_result_csv_evaluates_as_is_with_parsed_labels(annotated, tmp_path):
    names = annotated.obs_names[:60].tolist()
    truth = annotated.obs["bulk_labels"].astype(str).to_numpy()[:60]
    pred = annotated.obs["cellreasoner_label"].to_numpy()[:60]
    csv = _upstream_csv(tmp_path / "upstream_result.csv", names, truth, pred)
    ev = evaluate(str(csv), truth="labels")  # no pred: the layout is detected
    assert set(ev.per_cell["prediction"]) == set(pred)  # labels, never whole responses
    assert any("parsed from the 'response' column" in n for n in ev.notes)
    # the same as scoring the labels themselves
    direct = evaluate(pd.DataFrame({"cell_name": names, "labels": truth, "label": pred}),
                      truth="labels")
    assert ev.summary.loc[0, "mean_score"] == pytest.approx(direct.summary.loc[0, "mean_score"])
    # --pred response on a file that also has labels parses too
    both = pd.read_csv(csv).assign(label="ignored")
    ev2 = evaluate(both, truth="labels", pred="response")
    assert set(ev2.per_cell["prediction"]) == set(pred)


def test_cli_evaluate_upstream_csv_writes_parsed_labels_everywhere(annotated, tmp_path):
    names = annotated.obs_names[:60].tolist()
    truth = annotated.obs["bulk_labels"].astype(str).to_numpy()[:60]
    pred = annotated.obs["cellreasoner_label"].to_numpy()[:60]
    csv = _upstream_csv(tmp_path / "upstream_result.csv", names, truth, pred)
    out = tmp_path / "ev"
    assert main(["evaluate", str(csv), "--truth", "labels", "-o", str(out)]) == 0
    for table in ("scores.csv", "per_label.csv"):
        text = (out / table).read_text()
        assert "</think>" not in text and "Looking at" not in text
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores["prediction"]) == set(pred)
    assert any(p.name.startswith("heatmap_") for p in out.iterdir())


def _pairs(rows):
    return pd.DataFrame(rows, columns=["Ground Truth", "Model Prediction", "Evaluation Score"])


def test_pair_table_duplicates_take_the_majority_and_ties_the_lower_score(caplog):
    from cellreasoner.evaluation import PairScorer

    table = _pairs([("T cell", "CD4 T  cell", 1), (" T cell", "CD4 T cell", 0.5),
                    ("T cell", "CD4 T cell ", 0.5),  # three rows of one pair after normalising
                    ("B cell", "plasma cell", 1), ("B cell", "plasma  cell", 0.25),
                    ("NK cell", "NK cell", 1), ("NK cell", "NK  cell", 1)])
    with caplog.at_level("WARNING"):
        scorer = PairScorer(pair_table=table)
    assert scorer.score("T cell", "CD4 T cell") == 0.5  # 2 of 3 rows
    assert scorer.score("B  cell", "plasma cell") == 0.25  # a tie goes to the lower score
    assert set(scorer.conflicts) == {("T cell", "CD4 T cell"), ("B cell", "plasma cell")}
    assert "3 pairs appear more than once" in caplog.text and "2 of them disagree" in caplog.text


def test_pair_table_only_leaves_missing_pairs_unscored(annotated):
    truth = annotated.obs["bulk_labels"].astype(str)
    pred = annotated.obs["cellreasoner_label"].astype(str)
    judged = pd.DataFrame({"t": truth, "p": pred}).drop_duplicates().iloc[:3]
    table = _pairs([(t, p, 0.25) for t, p in judged.itertuples(index=False)])
    ev = evaluate(annotated, truth="bulk_labels", pair_table=table, pair_table_only=True)
    in_table = pd.MultiIndex.from_arrays([truth, pred]).isin(
        pd.MultiIndex.from_frame(judged))
    assert ev.summary.loc[0, "n_cells"] == in_table.sum() < len(annotated)
    assert ev.summary.loc[0, "mean_score"] == 0.25
    assert ev.per_cell["score"].isna().sum() == (~in_table).sum()
    assert any("the pair table scored" in n for n in ev.notes)
    # without the option the rest is scored by the rules
    full = evaluate(annotated, truth="bulk_labels", pair_table=table)
    assert full.summary.loc[0, "n_cells"] == len(annotated)
    with pytest.raises(InputError, match="needs a pair table"):
        evaluate(annotated, truth="bulk_labels", pair_table_only=True)


def test_pair_table_only_reproduces_the_judged_scores(shared_data):
    from cellreasoner.evaluation import PairScorer

    dev = pd.read_csv(shared_data / "pair_scores_dev.csv")
    scorer = PairScorer(pair_table=shared_data / "pair_scores_dev.csv", table_only=True)
    got = scorer.score_many(dev["Ground Truth"].astype(str), dev["Model Prediction"].astype(str))
    assert not np.isnan(got).any()  # every judged pair is found
    disputed = pd.MultiIndex.from_arrays(
        [dev["Ground Truth"].astype(str).map(lambda s: " ".join(s.split())),
         dev["Model Prediction"].astype(str).map(lambda s: " ".join(s.split()))]
    ).isin(list(scorer.conflicts))
    assert 0 < disputed.sum() < 40
    np.testing.assert_array_equal(got[~disputed], dev["Evaluation Score"].to_numpy()[~disputed])
    assert np.isnan(scorer.score("T cell", "a label no one judged"))


def test_report_reads_the_upstream_result_csv_with_parsed_labels(annotated, tmp_path):
    from cellreasoner.report import write_report

    names = annotated.obs_names[:60].tolist()
    truth = annotated.obs["bulk_labels"].astype(str).to_numpy()[:60]
    pred = annotated.obs["cellreasoner_label"].to_numpy()[:60]
    csv = _upstream_csv(tmp_path / "upstream_result.csv", names, truth, pred)
    html = write_report(str(csv), tmp_path / "r.html", truth="labels").read_text()
    for label in set(pred):
        assert label in html
    # labels, not whole responses, name the predictions (each response is one cell's text)
    assert html.count("weighing them gives") <= len(names)


def test_subtype_level_is_not_the_exact_cl_term(tmp_path):
    """Score 1 counts a sibling subtype (naive CD8 called effector memory CD8): that is
    subtype-level accuracy; the exact-CL-term accuracy beside it does not count it."""
    naive = "naive thymus-derived CD8-positive, alpha-beta T cell"
    em = "effector memory CD8-positive, alpha-beta T cell"
    obs = pd.DataFrame({"truth": [naive, naive, naive, "B cell"],
                        "pred": [em, naive, em, "B cell"]}, index=list("abcd"))
    ev = evaluate(ad.AnnData(obs=obs), truth="truth", pred="pred")
    assert ev.per_cell["score"].tolist() == [1.0, 1.0, 1.0, 1.0]
    s = ev.summary.iloc[0]
    assert s["subtype_accuracy"] == 1.0 and s["exact_cl_accuracy"] == 0.5
    assert ev.per_cell["exact_cl"].tolist() == [False, True, False, True]
    pl = ev.per_label.set_index("truth")
    assert pl.loc[naive, "exact_cl_accuracy"] == pytest.approx(1 / 3)
    assert pl.loc["B cell", "exact_cl_accuracy"] == 1.0
    assert s["exact_accuracy"] == s["subtype_accuracy"]  # the deprecated alias, in memory only
    assert "exact_accuracy" not in repr(ev) and "exact_cl_accuracy" in repr(ev)
    out = ev.to_dir(tmp_path / "ev", plots=False)
    metrics = pd.read_csv(out / "metrics.csv")
    assert "exact_accuracy" not in metrics.columns
    assert metrics.loc[0, ["subtype_accuracy", "exact_cl_accuracy"]].tolist() == [1.0, 0.5]
    assert pd.read_csv(out / "scores.csv")["exact_cl"].tolist() == [False, True, False, True]


def test_unmapped_truth_is_never_an_exact_cl_match():
    obs = pd.DataFrame({"truth": ["Zq7 blobs", "T cell"], "pred": ["Zq7 blobs", "T cell"]},
                       index=["a", "b"])
    ev = evaluate(ad.AnnData(obs=obs), truth="truth", pred="pred")
    assert ev.per_cell["exact_cl"].tolist() == [False, True]
    assert ev.summary.loc[0, "exact_cl_accuracy"] == 0.5

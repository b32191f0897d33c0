"""Issue 16 (Reliability): each test reproduces one probe that gave a wrong result, a crash or a loss."""

from __future__ import annotations

import io
import json
import re
import zipfile

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import BlobsDataset
from dq_plugins.lightning import DataQualityCallback
from dq_plugins.rules import Condition, DataQualityRuleFailed, FailRun, Rule, TagRun
from test_lightning_callback import fit


# ------------------------------------------------------------------ 1. rules before, and apart from, figures
def test_mathtext_in_metadata_neither_breaks_the_figures_nor_skips_a_failing_gate(tracking_uri):
    from test_lightning_slices_rules import WithSource

    train = WithSource()  # every "forum" label is wrong: that slice is weak and drawn
    frame = pd.DataFrame({"sample_id": range(240), "where": [r"$\frac{$" if s == "forum" else "web" for s in train.source]})
    gate = Rule("never_passes", Condition("mislabel_score", ">=", 0.0, aggregate="count"), then=[FailRun("raise")])
    callback = DataQualityCallback(metadata=frame, rules=[gate])
    with pytest.warns() as caught, pytest.raises(DataQualityRuleFailed, match="never_passes"):
        fit(callback, train=train, max_epochs=3, batch_size=32)
    assert r"where=$\frac{$" in set(callback.result.weak_slices["slice"])
    assert not [w for w in caught if "failed; the per-sample results" in str(w.message)]  # no figure failed
    run = mlflow.MlflowClient().get_run(callback.run_id)
    assert run.info.status == "FAILED"
    paths = {a.path for a in mlflow.MlflowClient().list_artifacts(callback.run_id, "dq")}
    assert {"dq/weak_slices.png", "dq/rules.json", "dq/samples.parquet"} <= paths


def test_a_failing_figure_never_skips_the_rules(tracking_uri, monkeypatch):
    import dq_plugins.figures.slices as slices_figure

    def broken(*args, **kwargs):
        raise RuntimeError("matplotlib broke")

    monkeypatch.setattr(slices_figure, "weak_slices_figure", broken)
    gate = Rule("gate", Condition("mislabel_score", ">=", 0.0, aggregate="count"), then=[FailRun("raise")])
    callback = DataQualityCallback(rules=[gate])
    with pytest.warns(RuntimeWarning, match="the weak-slice analysis failed"), pytest.raises(DataQualityRuleFailed):
        fit(callback, max_epochs=2)


def test_rules_that_cannot_be_evaluated_fail_their_gate(tracking_uri, monkeypatch):
    import dq_plugins.rules as rules_module

    monkeypatch.setattr(rules_module, "evaluate_rules", lambda *a, **k: (_ for _ in ()).throw(KeyError("boom")))
    gate = Rule("gate", Condition("mislabel_score", ">", 2.0, aggregate="count"), then=[FailRun("raise")])
    with pytest.warns(RuntimeWarning, match="could not be evaluated"), \
            pytest.raises(DataQualityRuleFailed, match="could not be evaluated"):
        fit(DataQualityCallback(rules=[gate]), max_epochs=1)


def test_figure_text_is_escaped():
    from dq_plugins.figures.slices import weak_slices_figure

    slices = pd.DataFrame({"split": "train", "slice": [r"source=$\frac{$", "a=$b"], "size": [10, 12],
                           "accuracy": [0.2, 0.5]})
    weak_slices_figure(slices, 0.7, title=r"$\frac{$").savefig(io.BytesIO(), format="png")


# ------------------------------------------------------------------ 10. untrusted artifacts
def test_tag_run_refuses_reserved_mlflow_tags():
    with pytest.raises(ValueError, match=r"reserved.*HINT: use your own prefix"):
        TagRun("mlflow.runName", "x")
    with pytest.raises(ValueError, match="reserved"):
        TagRun("MLflow.loggedArtifacts", "[]")


def test_the_html_map_escapes_text_for_the_script_data_state():
    from dq_plugins.figures.embedding_map import embedding_map_html

    frame = pd.DataFrame({"sample_id": [0, 1], "label": [0, 1], "pred": [0, 1], "x2d": [0.0, 1.0], "y2d": [0.0, 1.0]})
    evil = ["<!--<script>", "</script><script>alert(1)</script>"]
    page = embedding_map_html(frame, evil, class_names=["<!--", "</script"])
    data = re.search(r'<script id="dq-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    assert "<" not in data and ">" not in data
    assert json.loads(data)["text"][:2] == evil
    assert page.count("<script") == 2 and page.count("<!--") == 0


def _npy_header(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_load_history_checks_declared_shapes_before_decompressing(tmp_path, monkeypatch):
    from dq_plugins.raw_record import load_embeddings, load_history

    forged = tmp_path / "forged.npz"
    with zipfile.ZipFile(forged, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("pred.npy", _npy_header((300_000_000,)) + b"\0" * 64)
    with pytest.raises(ValueError, match="declares shape .* corrupt or forged"):
        load_history(forged)
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, ids=np.zeros(4, np.int64), embeddings=np.zeros((1000, 5000), np.float64))  # 40 MB
    assert bomb.stat().st_size < 200_000
    monkeypatch.setenv("DQ_PLUGINS_MAX_NPZ_BYTES", str(10 * 2**20))
    with pytest.raises(ValueError, match=r"declares 0.04 GiB.*HINT: .*DQ_PLUGINS_MAX_NPZ_BYTES"):
        load_embeddings(bomb)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, pred=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="Python objects"):
        load_history(pickled)



@pytest.mark.parametrize(("member", "content", "match"), [
    (None, b"not a zip", r"is not an \.npz file \(not a zip archive"),
    ("notes.txt", b"hello", r"holds 'notes.txt', which is not an \.npy array"),
    ("pred.npy", b"\x93NUMPY garbage", r"member 'pred.npy' has no valid \.npy header"),
])
def test_a_malformed_raw_record_is_named_before_it_is_read(tmp_path, member, content, match):
    from dq_plugins.raw_record import load_history

    path = tmp_path / "raw.npz"
    if member is None:
        path.write_bytes(content)
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(member, content)
    with pytest.raises(ValueError, match=match):
        load_history(path)


# ------------------------------------------------------------------ 4. a callback reused in a second fit
def test_a_reused_callback_records_the_second_fit_anew(tracking_uri):
    callback = DataQualityCallback()
    fit(callback, max_epochs=3)
    first_run = callback.run_id
    fit(callback, train=BlobsDataset(48, seed=3), max_epochs=2)
    assert callback.run_id != first_run
    history = callback.session.ledgers["train"].to_history()
    assert history.epochs.tolist() == [0, 1] and history.labels.shape == (48,)
    assert len(callback.result.samples) == 48


# ------------------------------------------------------------------ 5. trainer.validate() alone
def test_validate_alone_is_skipped_with_one_warning(tracking_uri):
    from torch.utils.data import DataLoader

    from test_lightning_callback import TinyClassifier, make_trainer

    callback = DataQualityCallback()
    trainer = make_trainer(callback)
    with pytest.warns(UserWarning, match=r"records inside `trainer.fit` only.*HINT") as caught:
        trainer.validate(TinyClassifier(), DataLoader(BlobsDataset(40), batch_size=8))
    assert sum("records inside" in str(w.message) for w in caught) == 1
    assert callback.session.ledgers == {} and callback.run_id is None


# ------------------------------------------------------------------ 6. runs left RUNNING
def test_a_fit_stopped_by_the_callback_ends_its_run_failed_and_leaves_no_temp_folder(tracking_uri, tmp_path, monkeypatch):
    import tempfile

    from torch.utils.data import Dataset

    class NoIds(Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, index):
            return {"inputs": BlobsDataset(32)[index]["inputs"], "labels": index % 3}

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    callback = DataQualityCallback()
    with pytest.raises(ValueError, match="has no key `idx`"):
        fit(callback, train=NoIds())
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [run.info.status for run in runs] == ["FAILED"]
    assert not list(scratch.glob("dq_plugins_*"))


def test_a_resumed_fit_logs_into_the_run_it_resumes(tracking_uri, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from test_lightning_callback import TinyClassifier, make_trainer

    data = BlobsDataset(48)
    first = DataQualityCallback()
    make_trainer(first, max_epochs=2, enable_checkpointing=True,
                 callbacks=[first, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)]).fit(
        TinyClassifier(), DataLoader(data, batch_size=16))
    mlflow.MlflowClient().set_terminated(first.run_id, status="FAILED")  # as if the process had died
    second = DataQualityCallback()
    make_trainer(second, max_epochs=3, enable_checkpointing=True,
                 callbacks=[second, ModelCheckpoint(dirpath=tmp_path / "c2")]).fit(
        TinyClassifier(), DataLoader(data, batch_size=16), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert second.run_id == first.run_id
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [(run.info.run_id, run.info.status) for run in runs] == [(first.run_id, "FINISHED")]


# ------------------------------------------------------------------ 3. MLflow outage
class SilentServer:
    """A TCP server on loopback that accepts connections and never answers (a hung tracking server)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.connections: list = []
        self.uri = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.connections.append(self.socket.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.socket.close()
        for connection in self.connections:
            connection.close()


def _kept(root):
    return [p.parent.parent for p in root.rglob("dq/samples.parquet") if (p.parent.parent / "dq_fallback.json").is_file()]


def test_an_unreachable_server_costs_seconds_and_the_results_are_kept(tmp_path, monkeypatch):
    import time

    monkeypatch.chdir(tmp_path)
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)  # MLflow's defaults: 7 retries, 120 s
    callback = DataQualityCallback(tracking_uri="http://127.0.0.1:9", fallback_dir=str(tmp_path / "kept"))
    start = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="could not write to MLflow.*kept in") as caught:
        _, trainer = fit(callback, max_epochs=1)
    assert time.perf_counter() - start < 45 and trainer.state.finished
    assert any("ConnectionError" in str(w.message) or "Connection refused" in str(w.message) for w in caught)
    assert len(_kept(tmp_path / "kept")) == 1


def test_a_hung_server_is_called_once_then_the_fit_goes_offline(tmp_path, monkeypatch):
    import time

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DQ_PLUGINS_MLFLOW_TIMEOUT", "1")
    server = SilentServer()
    try:
        callback = DataQualityCallback(tracking_uri=server.uri, fallback_dir=str(tmp_path / "kept"))
        start = time.perf_counter()
        with pytest.warns(RuntimeWarning, match="could not open an MLflow run"):
            fit(callback, max_epochs=2)
        assert time.perf_counter() - start < 40
        assert len(server.connections) <= 2  # one request and its one retry, at fit start; none after
    finally:
        server.close()
    assert len(_kept(tmp_path / "kept")) == 1


def test_an_unwritable_store_and_working_directory_keep_the_results_in_the_temp_folder(tmp_path, monkeypatch):
    import tempfile
    import time

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    callback = DataQualityCallback(tracking_uri=f"sqlite:///{blocker}/mlflow.db", fallback_dir=str(blocker / "dq"))
    start = time.perf_counter()
    with pytest.warns(RuntimeWarning, match=r"cannot be written"):
        _, trainer = fit(callback, max_epochs=1)
    assert time.perf_counter() - start < 45 and trainer.state.finished
    assert len(_kept(tmp_path / "tmp" / "dq_artifacts")) == 1


def test_the_fallback_never_raises_when_no_folder_can_be_written(tmp_path, monkeypatch):
    import tempfile

    from dq_plugins.sinks.mlflow_sink import MlflowSink

    blocker = tmp_path / "file"
    blocker.write_text("")
    sink = MlflowSink(tracking_uri="http://127.0.0.1:9", fallback_dir=blocker / "dq")
    sink.stage_path("dq/x.txt").write_text("x")
    sink.add_artifact("dq/x.txt")
    monkeypatch.setattr(tempfile, "tempdir", str(blocker))  # the temp folder cannot be written either
    with pytest.warns(RuntimeWarning, match="No folder could be written.*the results stay in"):
        assert sink.flush() is False
    sink.end()
    assert (sink._staging / "dq" / "x.txt").is_file()  # noqa: SLF001 - the only copy is kept


def test_dq_upload_targets_a_new_run_when_the_original_was_deleted(tmp_path, monkeypatch, capsys):
    from dq_plugins.cli import main
    from dq_plugins.sinks.mlflow_sink import MlflowSink

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    sink = MlflowSink(tracking_uri=uri, fallback_dir=tmp_path / "kept")
    run_id = sink.ensure_run()
    sink.stage_path("dq/x.txt").write_text("x")
    sink.add_artifact("dq/x.txt")
    sink._keep_locally(RuntimeError("outage"))  # noqa: SLF001 - what flush does when MLflow fails
    client = mlflow.MlflowClient(uri)
    client.delete_run(run_id)
    assert main(["upload", str(tmp_path / "kept" / run_id), "--run-id", run_id]) != 0
    assert "was deleted" in capsys.readouterr().err
    assert main(["upload", str(tmp_path / "kept" / run_id)]) == 0
    runs = [r for r in client.search_runs(["0"]) if r.info.run_id != run_id]
    assert len(runs) == 1 and "dq/x.txt" in {a.path for a in client.list_artifacts(runs[0].info.run_id, "dq")}


# ------------------------------------------------------------------ 2. colliding ids
def _tensor_set(n: int, seed: int, label_shift: int = 0):
    import torch
    from torch.utils.data import TensorDataset

    blobs = BlobsDataset(n, seed=seed)
    return TensorDataset(blobs.inputs, (blobs.labels + label_shift) % 3)


@pytest.mark.parametrize(("label_shift", "match"), [(1, "arrived with two different labels"),
                                                    (0, r"96 rows but only 48 distinct ids")])
def test_concatenated_datasets_with_colliding_ids_fail_with_the_fix(tracking_uri, label_shift, match):
    from torch.utils.data import ConcatDataset

    from dq_plugins import with_ids

    train = ConcatDataset([with_ids(_tensor_set(48, 0)), with_ids(_tensor_set(48, 1, label_shift))])
    callback = DataQualityCallback()
    with pytest.raises(ValueError, match=rf"{match}.*HINT: .*with_ids\(b, offset=len\(a\)\)"):
        fit(callback, train=train, max_epochs=2)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [run.info.status for run in runs] == ["FAILED"]


def test_an_id_offset_keeps_concatenated_datasets_apart(tracking_uri):
    from torch.utils.data import ConcatDataset

    from dq_plugins import with_ids

    a, b = _tensor_set(48, 0), _tensor_set(48, 1, 1)
    callback, _ = fit(train=ConcatDataset([with_ids(a), with_ids(b, offset=len(a))]), max_epochs=2)
    assert sorted(callback.result.samples["sample_id"]) == list(range(96))
    with pytest.raises(ValueError, match="non-negative integer"):
        with_ids(a, offset=-1)


def test_a_sampler_with_replacement_repeats_ids_without_error(tracking_uri):
    from torch.utils.data import DataLoader, WeightedRandomSampler

    from test_lightning_callback import TinyClassifier, make_trainer

    data = BlobsDataset(48)
    callback = DataQualityCallback()
    loader = DataLoader(data, batch_size=16, sampler=WeightedRandomSampler([1.0] * 48, 96, replacement=True))
    make_trainer(callback, max_epochs=1).fit(TinyClassifier(), loader)
    assert callback.result is not None


# ------------------------------------------------------------------ 9. inputs that change shape
class Resizable(BlobsDataset):
    """Blobs whose length becomes ``sizes[epoch]`` (set by the module at the end of the epoch before)."""

    def __init__(self, n: int, sizes: dict[int, int]):
        super().__init__(n)
        self.sizes, self.size = sizes, sizes[0]

    def __len__(self):
        return self.size


def _resizing_module(data):
    from test_lightning_callback import TinyClassifier

    class Module(TinyClassifier):
        def on_train_epoch_end(self):
            data.size = data.sizes.get(self.current_epoch + 1, data.size)

    return Module()


def test_a_dataset_that_shrinks_between_epochs_warns(tracking_uri):
    data = Resizable(96, {0: 96, 1: 48})
    with pytest.warns(RuntimeWarning, match=r"changed from 96 to 48 samples before epoch 1.*HINT"):
        fit(module=_resizing_module(data), train=data, max_epochs=2)


def test_a_dataset_that_grows_past_the_id_range_names_the_length(tracking_uri):
    data = Resizable(96, {0: 48, 1: 96})
    with pytest.raises(ValueError, match=r"grew from 48 to 96 samples.*HINT: pass `num_samples="):
        fit(module=_resizing_module(data), train=data, max_epochs=2)
    callback, _ = fit(DataQualityCallback(num_samples=96), module=_resizing_module(Resizable(96, {0: 48, 1: 96})),
                      train=Resizable(96, {0: 48, 1: 96}), max_epochs=1)


class Relabelled(BlobsDataset):
    def __init__(self, n, relabel):
        super().__init__(n)
        self.relabel = relabel

    def __getitem__(self, index):
        item = super().__getitem__(index)
        if index in self.relabel:
            item["labels"] = torch.tensor(self.relabel[index])
        return item


def test_a_label_out_of_range_after_the_first_batch_is_an_error_about_the_label(tracking_uri):
    with pytest.raises(ValueError, match=r"1 train rows in epoch 0 have a label outside.*Label 7 under `labels`"):
        fit(train=Relabelled(96, {95: 7}), shuffle=False, max_epochs=1,
            module=_ignoring_module())


def _ignoring_module():
    import torch.nn.functional as F

    from test_lightning_callback import TinyClassifier

    class Module(TinyClassifier):
        def _step(self, batch):
            logits = self(batch["inputs"])
            labels = batch["labels"].clamp(max=2).masked_fill(batch["labels"] > 2, -100)
            return {"loss": F.cross_entropy(logits, labels, ignore_index=-100), "logits": logits}

    return Module()


@pytest.mark.parametrize("where", [0, 95], ids=["first batch", "last batch"])
def test_ignore_index_rows_are_skipped_with_one_warning_wherever_they_are(tracking_uri, where):
    with pytest.warns(RuntimeWarning, match=r"label -100 \(PyTorch's ignore index\).*not recorded") as caught:
        callback, _ = fit(train=Relabelled(96, {where: -100}), shuffle=False, max_epochs=2, module=_ignoring_module())
    assert sum("ignore index" in str(w.message) for w in caught) == 1
    assert where not in set(callback.result.samples["sample_id"]) and len(callback.result.samples) == 95


def test_string_ids_say_how_to_fix_them(tracking_uri):
    class Named(BlobsDataset):
        def __getitem__(self, index):
            return {**super().__getitem__(index), "idx": f"doc-{index}"}

    with pytest.raises(ValueError, match=r"are strings \(e.g. 'doc-.*HINT: map them to 0-based integer positions"):
        fit(train=Named(32))


def test_a_single_logit_binary_head_says_how_to_adapt(tracking_uri):
    import torch.nn.functional as F

    from test_lightning_callback import TinyClassifier

    class Binary(TinyClassifier):
        def __init__(self):
            super().__init__(num_classes=1)

        def _step(self, batch):
            logit = self(batch["inputs"])
            return {"loss": F.binary_cross_entropy_with_logits(logit[:, 0], (batch["labels"] > 0).float()),
                    "logits": logit}

    with pytest.raises(ValueError, match=r"single output.*HINT: .*torch.cat\(\[torch.zeros_like\(z\), z\], dim=1\)"):
        fit(module=Binary())


def test_transposed_square_logits_are_caught_at_the_first_batch(tracking_uri):
    import torch.nn.functional as F

    from test_lightning_callback import TinyClassifier

    class Transposed(TinyClassifier):
        def __init__(self):
            super().__init__(num_classes=16)

        def _step(self, batch):
            logits = self(batch["inputs"])
            return {"loss": F.cross_entropy(logits, batch["labels"]), "logits": logits.T}

    with pytest.raises(ValueError, match=r"look transposed.*HINT: return logits of shape \(batch, num_classes\)"):
        fit(module=Transposed(), batch_size=16)


# ------------------------------------------------------------------ 7. resume keeps metadata, embeddings, rule history
def test_a_mid_epoch_resume_keeps_metadata_and_embeddings_of_the_batches_before_it(tracking_uri, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    from test_lightning_callback import TinyClassifier, make_trainer
    from test_lightning_slices_rules import WithSource
    from test_resume_kill import ResumableLoader

    data = WithSource(96)
    first = DataQualityCallback(metadata_keys=["source"])
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    make_trainer(first, max_steps=3, enable_checkpointing=True, callbacks=[first, saver]).fit(
        TinyClassifier(), ResumableLoader(data, batch_size=16))
    checkpoint = next((tmp_path / "ckpt").glob("*step=3*.ckpt"))
    second = DataQualityCallback(metadata_keys=["source"])
    make_trainer(second, max_epochs=1, enable_checkpointing=True,
                 callbacks=[second, ModelCheckpoint(dirpath=tmp_path / "c2")]).fit(
        TinyClassifier(), ResumableLoader(data, batch_size=16), ckpt_path=str(checkpoint))
    samples = second.result.samples
    assert len(samples) == 96 and samples["source"].notna().all()
    assert (samples["source"] == samples["sample_id"].map(lambda i: data.source[i])).all()
    assert samples["x2d"].notna().all()  # every sample has its embedding, those trained before the checkpoint too


def test_a_resume_keeps_the_validation_rule_history(tracking_uri, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from test_lightning_callback import TinyClassifier, make_trainer
    from test_lightning_slices_rules import WithSource
    from test_validation_rules import ALWAYS, rules_table

    rules = [Rule("watch", ALWAYS, then=[TagRun("dq.watched", "yes")], split="validation", on_validation=True)]
    loaders = (DataLoader(WithSource(96), batch_size=32), DataLoader(WithSource(60), batch_size=32))
    first = DataQualityCallback(rules=rules, embeddings=False)
    make_trainer(first, max_epochs=1, enable_checkpointing=True,
                 callbacks=[first, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)]).fit(TinyClassifier(), *loaders)
    second = DataQualityCallback(rules=rules, embeddings=False)
    make_trainer(second, max_epochs=2, enable_checkpointing=True,
                 callbacks=[second, ModelCheckpoint(dirpath=tmp_path / "c2")]).fit(
        TinyClassifier(), *loaders, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [row["epoch"] for row in rules_table(second.run_id)] == [0, 1, None]

"""The rank helpers in one process, with the rank and world size simulated."""

from __future__ import annotations

import json

import pytest
import torch

from tae_framework import distributed
from tae_framework.errors import ConfigError


@pytest.fixture
def as_rank(monkeypatch):
    """Pretend to be rank ``r`` of ``w`` (barriers become no-ops)."""

    def set_rank(r: int, w: int) -> None:
        monkeypatch.setattr(distributed, "rank", lambda: r)
        monkeypatch.setattr(distributed, "world_size", lambda: w)
        monkeypatch.setattr(distributed, "is_distributed", lambda: w > 1)
        monkeypatch.setattr(distributed, "barrier", lambda what: None)

    return set_rank


def test_one_process_gets_everything():
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.share(list("abc")) == list("abc")
    assert distributed.all_gather_json({"a": 1}) == [{"a": 1}]
    distributed.check_versions()  # nothing to compare with


def test_share_deals_items_in_turn_and_refuses_idle_ranks(as_rank):
    as_rank(1, 3)
    assert distributed.share(list(range(8))) == [1, 4, 7]
    with pytest.raises(ConfigError, match=r"3 processes share 2 texts.*--nproc-per-node 2"):
        distributed.share(["x", "y"], "texts")
    assert distributed.share(["x", "y", "z"][:1], allow_idle=True) == []


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shared_checkpoint_deals_whole_batches(tmp_path, as_rank):
    as_rank(1, 2)
    ck = distributed.SharedCheckpoint(tmp_path / "gen.jsonl")
    # batches of 2: [0,1] [2,3] [4,5] [6]; rank 1 gets the second and the fourth
    assert ck.share(list(range(7)), batch_size=2) == [2, 3, 6]
    ck.add([{"id": "2", "v": 1}])
    assert (tmp_path / "gen.jsonl.rank1").is_file() and not (tmp_path / "gen.jsonl").exists()


def test_more_ranks_than_items_of_a_protocol_is_refused(tmp_path, as_rank):
    as_rank(0, 4)
    with pytest.raises(ConfigError, match=r"4 processes share 3 items.*--nproc-per-node 3"):
        distributed.SharedCheckpoint(tmp_path / "mc.jsonl", "items", total=3)
    assert not list(tmp_path.iterdir())


def test_main_rank_merges_what_every_rank_wrote(tmp_path, as_rank):
    path = tmp_path / "gen.jsonl"
    path.write_text(json.dumps({"id": "a", "v": 0}) + "\n")
    # left by a run in which one rank died: a finished row and one also in the main file
    (tmp_path / "gen.jsonl.rank1").write_text(json.dumps({"id": "b", "v": 1}) + "\n" + json.dumps({"id": "a", "v": 9}) + "\n")
    (tmp_path / "gen.jsonl.rank0").write_text(json.dumps({"id": "c", "v": 2}) + "\n{\"id\": \"d\", \"v")  # cut short
    as_rank(0, 2)
    ck = distributed.SharedCheckpoint(path)  # merged on opening: nothing written is lost
    assert {r["id"]: r["v"] for r in _rows(path)} == {"a": 0, "b": 1, "c": 2}
    assert not list(tmp_path.glob("gen.jsonl.rank*"))
    assert set(ck.done.rows) == {"a", "b", "c"}
    ck.add([{"id": "e", "v": 3}])
    done = ck.finish()
    assert set(done.rows) == {"a", "b", "c", "e"} and len(_rows(path)) == 4


def test_a_tensor_parallel_model_is_refused_for_evaluation():
    class Sharded(torch.nn.Module):
        tp_size = 2

    with pytest.raises(distributed.DistributedError, match="tensor-parallel.*device_map='auto'"):
        distributed.refuse_tensor_parallel(Sharded(), "tae eval")
    distributed.refuse_tensor_parallel(torch.nn.Linear(2, 2), "tae eval")


def test_site_slices_need_a_whole_world(as_rank):
    x = torch.arange(12.0).reshape(1, 1, 12)
    assert distributed.local_site(x, 12) is x and distributed.gather_site(x, 12) is x
    as_rank(1, 2)
    assert distributed.local_site(x, 6).flatten().tolist() == list(range(6, 12))
    with pytest.raises(distributed.DistributedError, match="spanning the whole world"):
        distributed.local_site(x, 4)


def test_a_launched_process_that_never_joined_is_warned_about(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "_warned_uninitialised", False)
    with pytest.warns(RuntimeWarning, match=r"call tae_framework.distributed.init\(\)"):
        assert distributed.is_distributed() is False

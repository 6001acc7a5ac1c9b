import json

import pyarrow.parquet as pq
import pytest

from elasticml.data.corpus import MANIFEST, build_corpus, read_manifest
from elasticml.data.loader import TokenBlocks
from elasticml.errors import DataError


def test_corpus_is_sharded_complete_and_deterministic(tmp_path, corpus):
    m = read_manifest(corpus)
    assert len(m.shards) == 4 and m.num_documents >= 4
    rows = sum(pq.read_table(corpus / s).num_rows for s in m.shards)
    assert rows == m.num_documents
    again = build_corpus(tmp_path / "again", num_shards=4, max_bytes=600_000)
    assert again.sha256 == m.sha256  # same Python, same bytes


def test_existing_corpus_is_reused_and_no_staging_is_left(tmp_path):
    out = tmp_path / "c"
    build_corpus(out, num_shards=2, max_bytes=100_000)
    stamp = (out / MANIFEST).stat().st_mtime_ns
    build_corpus(out, num_shards=2, max_bytes=100_000)
    assert (out / MANIFEST).stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_incomplete_corpus_is_refused(tmp_path, corpus):
    half = tmp_path / "half"
    half.mkdir()
    (half / "shard-00000.parquet").write_bytes((corpus / "shard-00000.parquet").read_bytes())
    with pytest.raises(DataError, match="not a complete corpus"):
        TokenBlocks(str(half), seq_len=32)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DataError, match="format"):
        read_manifest(bad)


def test_workers_take_disjoint_shares_that_make_up_the_global_batch(corpus):
    data = TokenBlocks(str(corpus), seq_len=32)
    for step in (0, 7):
        whole = data.sample_ids(step, global_batch=8, rank=0, world_size=1)
        shares = [data.sample_ids(step, global_batch=8, rank=r, world_size=4) for r in range(4)]
        assert sum(shares, []) == whole
        x_whole, _ = data.batch(step, global_batch=8)
        x_parts = [data.batch(step, global_batch=8, rank=r, world_size=2)[0] for r in range(2)]
        assert (x_whole == __import__("torch").cat(x_parts)).all()


def test_targets_are_inputs_shifted_by_one(corpus):
    x, y = TokenBlocks(str(corpus), seq_len=32).batch(3, global_batch=4)
    assert (x[:, 1:] == y[:, :-1]).all()


def test_epochs_reshuffle_but_cover_every_block(corpus):
    data = TokenBlocks(str(corpus), seq_len=512)
    n = len(data)
    first = [int(data._order(0)[i]) for i in range(n)]
    second = [int(data._order(1)[i]) for i in range(n)]
    assert sorted(first) == sorted(second) == list(range(n))
    assert first != second


def test_an_uneven_split_still_covers_the_global_batch_exactly_once(corpus):
    data = TokenBlocks(str(corpus), seq_len=32)
    for world in (1, 2, 3, 5, 8):
        shares = [data.sample_ids(4, global_batch=8, rank=r, world_size=world) for r in range(world)]
        assert sum(shares, []) == list(range(32, 40))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(Exception, match="smaller than the 9 workers"):
        data.sample_ids(0, global_batch=8, rank=0, world_size=9)

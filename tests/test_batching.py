from nmt.batching import collate, plan_batches, shard
from nmt.data.store import TokenizedPairs
from nmt.tokenizer import BOS, EOS, PAD

SRC = [[5] * (i % 13 + 1) for i in range(300)]
TGT = [[6] * ((i * 7) % 17 + 1) for i in range(300)]


def plan(**kwargs):
    options = dict(batch_tokens=200, batch_sentences=None, seed=3, epoch=1)
    options.update(kwargs)
    return plan_batches([len(s) for s in SRC], [len(t) for t in TGT], **options)


def test_every_pair_once_and_token_budget_kept():
    batches = plan()
    assert sorted(i for b in batches for i in b) == list(range(300))
    for batch in batches:
        longest = max(max(len(TGT[i]), len(SRC[i])) + 1 for i in batch)
        assert longest * len(batch) <= 200 or len(batch) == 1


def test_same_seed_and_epoch_same_plan_other_epoch_other_order():
    assert list(plan()) == list(plan())
    assert list(plan(epoch=2)) != list(plan())


def test_sentence_batches():
    batches = plan(batch_sentences=64)
    assert [len(b) for b in sorted(batches, key=len)][1:] == [64] * (len(batches) - 1)


def test_shards_are_disjoint_and_equal_sized():
    batches = plan()
    shards = [shard(batches, rank, 3) for rank in range(3)]
    assert len({len(s) for s in shards}) == 1
    seen = [tuple(b) for s in shards for b in s]
    assert len(seen) == len(set(seen))


def test_collate_shapes_and_special_tokens():
    batch = collate(TokenizedPairs.from_lists([[7, 8], [9]], [[10], [11, 12, 13]]), [0, 1])
    assert batch.src.tolist() == [[7, 8, EOS], [9, EOS, PAD]]
    assert batch.src_lengths.tolist() == [3, 2]
    assert batch.tgt_in.tolist() == [[BOS, 10, PAD, PAD], [BOS, 11, 12, 13]]
    assert batch.tgt_out.tolist() == [[10, EOS, PAD, PAD], [11, 12, 13, EOS]]
    assert batch.n_tokens == 6

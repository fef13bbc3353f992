"""The synthetic token-sequence task and the transformer classifier of the zoo."""

from __future__ import annotations

import torch

from whybox import zoo


def adjacent_pairs(x: torch.Tensor) -> set[tuple[int, int]]:
    return set(zip(x[:-1].tolist(), x[1:].tolist()))


def test_class_is_the_adjacent_bigram_and_single_tokens_are_ambiguous():
    d = zoo.make_token_sequences(n_train=300, n_test=60, vocab=50, length=10, n_classes=3, bigrams_per_class=1,
                                 distractors=2, seed=5)
    again = zoo.make_token_sequences(n_train=300, n_test=60, vocab=50, length=10, n_classes=3, bigrams_per_class=1,
                                     distractors=2, seed=5)
    assert torch.equal(d.X_train, again.X_train) and torch.equal(d.y_test, again.y_test)
    assert d.X_train.shape == (300, 10) and d.X_train.dtype == torch.int64 and int(d.X_train.max()) < 50
    X, y = torch.cat([d.X_train, d.X_test]), torch.cat([d.y_train, d.y_test])
    pairs = [adjacent_pairs(x) for x in X]
    for c in range(3):
        # one adjacent pair occurs in every sequence of class c and in none of the others
        common = set.intersection(*(p for p, label in zip(pairs, y) if label == c))
        marker = [pair for pair in common if not any(pair in p for p, label in zip(pairs, y) if label != c)]
        assert len(marker) == 1
        u, v = marker[0]
        # ... while each of its tokens alone also turns up in other classes' sequences (distractors)
        others = X[y != c]
        assert (others == u).any(1).float().mean() > 0.05 and (others == v).any(1).float().mean() > 0.05
    assert set(y.tolist()) == {0, 1, 2}


def test_transformer_classifier_size_and_learning():
    model = zoo.transformer_classifier()
    d_model, ff, layers, vocab, length, classes = 128, 512, 4, 1000, 32, 4
    per_layer = (3 * d_model * d_model + 3 * d_model) + (d_model * d_model + d_model) + (d_model * ff + ff) \
        + (ff * d_model + d_model) + 4 * d_model
    assert sum(p.numel() for p in model.parameters()) == vocab * d_model + length * d_model + layers * per_layer \
        + d_model * classes + classes == 925_700
    d = zoo.make_token_sequences(n_train=1000, n_test=200, vocab=40, length=10, n_classes=3, bigrams_per_class=1,
                                 distractors=1, seed=0)
    small = zoo.transformer_classifier(vocab=40, n_classes=3, length=10, d_model=16, heads=2, layers=1, ff=32, seed=0)
    losses = zoo.train_adam(small, d.X_train, d.y_train, epochs=6, lr=3e-3, batch_size=32)
    assert not small.training and losses[-1] < losses[0]
    with torch.no_grad():
        accuracy = (small(d.X_test).argmax(1) == d.y_test).float().mean().item()
    assert accuracy > 0.9  # chance is 1/3

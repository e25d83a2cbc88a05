import pytest
import torch

from scrutable.metrics import Distance, nearest_tokens, project_to_vocabulary

# A vocabulary whose nearest neighbours are known by hand.
E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [3.0, 3.0]])


def test_euclidean_and_cosine_disagree_where_they_should():
    prompt = torch.tensor([[0.6, 0.5], [2.5, 2.0], [-0.2, 0.0]])
    euclid = nearest_tokens(prompt, E, Distance.EUCLIDEAN)
    cosine = nearest_tokens(prompt, E, Distance.COSINE)
    assert euclid.token_ids.tolist() == [0, 3, 2]
    assert cosine.token_ids.tolist() == [3, 3, 2]
    expected = [(0.4**2 + 0.5**2) ** 0.5, (0.5**2 + 1.0**2) ** 0.5, 0.8]
    torch.testing.assert_close(euclid.distances, torch.tensor(expected))
    assert euclid.distance_differential == pytest.approx(sum(expected) / 3)
    cos_first = (0.6 * 3 + 0.5 * 3) / ((0.6**2 + 0.5**2) ** 0.5 * 18**0.5)
    assert cosine.distances[0].item() == pytest.approx(1 - cos_first, abs=1e-6)
    assert cosine.distances[2].item() == pytest.approx(0.0, abs=1e-6)


def test_tokens_unembed_to_themselves_at_distance_zero(tiny_gpt2):
    ids = torch.tensor([15496, 995, 318, 50256])
    result = nearest_tokens(tiny_gpt2.embedding_matrix[ids], tiny_gpt2.embedding_matrix)
    assert result.token_ids.tolist() == ids.tolist()
    assert result.distances.abs().max().item() < 1e-5


def test_batched_prompts_match_one_at_a_time():
    prompts = torch.randn(3, 5, 2)
    batched = nearest_tokens(prompts, E, "cosine")
    for i in range(3):
        single = nearest_tokens(prompts[i], E, "cosine")
        assert batched.token_ids[i].tolist() == single.token_ids.tolist()


def test_projection_passes_the_gradient_straight_through():
    prompt = torch.tensor([[0.6, 0.5], [2.5, 2.0]], requires_grad=True)
    ids, projected = project_to_vocabulary(prompt, E, "cosine")
    assert ids.tolist() == [3, 3]
    torch.testing.assert_close(projected.detach(), E[[3, 3]])
    weights = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    (projected * weights).sum().backward()
    torch.testing.assert_close(prompt.grad, weights)

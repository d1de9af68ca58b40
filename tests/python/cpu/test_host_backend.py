"""Buffer on CPU tensors (epcomm's host reference backend, ranks as threads) against the numpy
model of the contract: every output of every rank, bit for bit, over several rounds."""
import pytest
import torch

from helpers.expect import compare_round, expected_round
from helpers.runner import host_reference
from helpers.workload import Case

CASES = [
    Case(1, 13, 64, 4, 8),
    Case(2, 0, 64, 2, 4),
    Case(2, 1, 128, 8, 16, routing="with_holes", fp8=True),
    Case(2, 33, 256, 4, 8, routing="skewed", index_dtype=torch.int32, expert_alignment=4),
    Case(3, 20, 32, 3, 9, routing="all_to_one", with_weights=False),
    Case(3, 17, 128, 6, 12, routing="one_rank_empty", fp8=True, index_dtype=torch.int32),
    Case(4, 40, 64, 8, 32, routing="uniform", rounds=3, expert_alignment=3),
    Case(4, 25, 128, 4, 16, routing="with_holes", cached=True, fp8=True),
    Case(4, 31, 64, 4, 8, routing="skewed", cached=True, rounds=2),
    Case(3, 24, 64, 4, 12, routing="uniform", worst_case=True, max_tokens_per_rank=32),
    Case(2, 19, 128, 2, 8, routing="with_holes", worst_case=True, cached=True, fp8=True,
         max_tokens_per_rank=24),
    Case(4, 128, 16, 1, 4, routing="all_to_one", max_tokens_per_rank=128),  # a full pool
]


@pytest.mark.parametrize("case", CASES, ids=Case.name)
def test_every_output_matches_the_numpy_model(case: Case):
    got = host_reference(case)
    for index in range(case.rounds):
        want = expected_round(case.round(index))
        for rank in range(case.num_ranks):
            compare_round(case.round(index), rank, got[rank][index], want[rank])


def test_a_wrong_model_is_caught():
    """The comparison itself can fail: one flipped bit in combined_x is reported."""
    case = CASES[3]
    got = host_reference(case)
    want = expected_round(case.round(0))
    got[1][0]["combined_x"][0, 0] ^= 1
    with pytest.raises(AssertionError, match="combined_x"):
        compare_round(case.round(0), 1, got[1][0], want[1])

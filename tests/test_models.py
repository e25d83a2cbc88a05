import shutil

import pytest
import torch

from scrutable.errors import UserError
from scrutable.models import ModelKind, load_encoder, load_model


def test_tiny_gpt2_uses_the_real_tokenizer_and_is_frozen(tiny_gpt2):
    assert tiny_gpt2.tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tiny_gpt2.kind is ModelKind.CAUSAL
    assert tiny_gpt2.model.config.n_layer == 2 and tiny_gpt2.hidden_size == 32
    assert not any(p.requires_grad for p in tiny_gpt2.model.parameters())
    assert tiny_gpt2.embedding_matrix.shape == (50257, 32)
    assert tiny_gpt2.start_token_id == 50256


def test_tiny_t5_drops_padding_rows_from_the_vocabulary(tiny_t5):
    assert tiny_t5.kind is ModelKind.SEQ2SEQ
    assert len(tiny_t5.tokenizer) == 32100
    assert tiny_t5.embedding_matrix.shape[0] == tiny_t5.vocab_size == 32100


def test_vocab_signature_tells_shared_vocabularies_apart(tiny_gpt2, tiny_t5, data_dir):
    again = load_model("tiny-gpt2", data_dir=data_dir)
    assert again.vocab_signature == tiny_gpt2.vocab_signature
    assert tiny_t5.vocab_signature != tiny_gpt2.vocab_signature


def test_local_directory_round_trip(tiny_gpt2, tmp_path):
    tiny_gpt2.model.save_pretrained(tmp_path)
    tiny_gpt2.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    ids = torch.tensor([[15496, 995]])
    torch.testing.assert_close(loaded.model(ids).logits, tiny_gpt2.model(ids).logits)
    assert loaded.kind is ModelKind.CAUSAL and loaded.tokenizer.pad_token_id is not None


def test_offline_hub_name_gives_one_clear_error():
    with pytest.raises(UserError, match="local directory"):
        load_model("distilgpt2")


def test_missing_local_directory_is_named(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "nope"))


def test_tiny_models_need_the_tokenizer_folder(monkeypatch):
    monkeypatch.delenv("SCRUTABLE_DATA_DIR")
    with pytest.raises(UserError, match="SCRUTABLE_DATA_DIR"):
        load_model("tiny-gpt2")


@pytest.mark.slow
@pytest.mark.smollm
def test_smollm2_is_a_real_pretrained_lm(smollm):
    assert smollm.kind is ModelKind.CAUSAL and smollm.vocab_size == 49152
    assert smollm.start_token_id == 0  # <|endoftext|>, not the chat marker
    fluent = smollm.tokenizer("The movie was great.", add_special_tokens=False)["input_ids"]
    shuffled = list(reversed(fluent))
    from scrutable.metrics import sequence_perplexities

    (fluent_ppl, _), (shuffled_ppl, _) = sequence_perplexities(smollm, [fluent, shuffled])
    assert fluent_ppl < shuffled_ppl / 10  # a trained LM, not random weights


@pytest.mark.slow
def test_minilm_encoder_ranks_paraphrases_above_unrelated_text():
    encoder = load_encoder("minilm")
    emb = encoder.encode(["the food was great", "the meal was delicious", "my car broke down"])
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.2


@pytest.mark.parametrize("name, file", [("gpt2", "vocab.json"), ("t5", "spiece.model")])
def test_a_truncated_tokenizer_file_is_one_user_error(name, file, tmp_path, data_dir):
    from scrutable.models import tiny_gpt2, tiny_t5

    shutil.copytree(data_dir / "tokenizers" / name, tmp_path / "tokenizers" / name)
    damaged = tmp_path / "tokenizers" / name / file
    damaged.write_bytes(damaged.read_bytes()[:5000])  # a copy cut short
    with pytest.raises(UserError, match=f"tokenizer in .*{name} cannot be read.*restore the folder"):
        (tiny_gpt2 if name == "gpt2" else tiny_t5)(tmp_path)

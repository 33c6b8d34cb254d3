import os
from pathlib import Path

import pytest

from freefuse_core import TokenPiece, find_subject_tokens


def chunked(prompt: str, size: int = 3) -> list[TokenPiece]:
    """A stand-in tokenizer: every word cut into pieces of `size` characters, with offsets."""
    pieces, pos = [], 0
    for word in prompt.split():
        start = prompt.index(word, pos)
        for i in range(0, len(word), size):
            pieces.append(TokenPiece(word[i:i + size], start + i, start + min(i + size, len(word))))
        pos = start + len(word)
    return pieces + [TokenPiece("</s>", len(prompt), len(prompt))]


def test_multi_token_words_every_occurrence_case_and_punctuation():
    prompt = "(Alice), with BOB; alice smiles at Bob-the-cat"
    pieces = chunked(prompt)
    alice, bob = find_subject_tokens(prompt, pieces, [("a", ["Alice"]), ("b", ["bob"])])
    assert [pieces[i].text for i in alice] == ["(Al", "ice", "ali", "ce"]
    assert [pieces[i].text for i in bob] == ["BOB", "Bob"]


def test_word_boundaries_and_phrases():
    prompt = "Alicent and Al meet Mr   Bean"
    pieces = chunked(prompt)
    (al,), = [find_subject_tokens(prompt, pieces, [("x", ["Al"])])[0]]
    assert pieces[al].text == "Al"
    bean = find_subject_tokens(prompt, pieces, [("m", ["mr bean"])])[0]
    assert "".join(pieces[i].text for i in bean) == "MrBean"


def test_unicode_letters_are_word_characters_and_special_tokens_never_match():
    prompt = "Renée and René"
    pieces = chunked(prompt) + [TokenPiece("<pad>", 11, 11)]   # an empty span inside "René"
    (rene,) = find_subject_tokens(prompt, pieces, [("r", ["rené"])])
    assert [pieces[i].text for i in rene] == ["Ren", "é"]


@pytest.mark.parametrize("subjects, match", [
    ([("a", ["Zed"])], "'Zed' of subject 'a' is not in the prompt"),
    ([("a", ["Ali"])], "'Ali' of subject 'a' is not in the prompt"),
    ([("a", ["  "])], "subject 'a' has an empty activation word"),
    ([("a", [])], "subject 'a' has no activation word"),
    ([("a", ["Alice"]), ("b", ["alice"])], "subjects 'a' and 'b' claim the same token 'Ali'"),
    ([("a", ["Bob"]), ("b", ["Alice", "bob"])], "subjects 'a' and 'b' claim the same token 'Bob'"),
])
def test_errors_name_subject_and_word(subjects, match):
    prompt = "Alice and Bob"
    with pytest.raises(ValueError, match=match):
        find_subject_tokens(prompt, chunked(prompt), subjects)


def test_word_that_covers_no_token():
    prompt = "Alice and Bob"
    with pytest.raises(ValueError, match="'Alice' of subject 'a' covers no token"):
        find_subject_tokens(prompt, [TokenPiece("x", 20, 21), TokenPiece("</s>", 2, 2)], [("a", ["Alice"])])


T5_FOLDER = Path(os.environ.get("COMFYUI_PATH", "/root/ComfyUI")) / "comfy" / "text_encoders" / "t5_tokenizer"


def test_with_the_real_t5_tokenizer():
    """Flux's own T5 tokenizer files (shipped in ComfyUI's tree; read as files, not imported)."""
    transformers = pytest.importorskip("transformers")
    if not T5_FOLDER.is_dir():
        pytest.skip(f"no T5 tokenizer files at {T5_FOLDER}")
    tokenizer = transformers.T5TokenizerFast.from_pretrained(str(T5_FOLDER))
    prompt = "Hermione and harry-potter tucking a flower in Hermione's hair"
    enc = tokenizer(prompt, return_offsets_mapping=True)
    pieces = [TokenPiece(prompt[s:e], s, e) for s, e in enc["offset_mapping"]]
    assert pieces[-1].start == pieces[-1].end   # </s>
    herm, harry = find_subject_tokens(prompt, pieces, [("h", ["Hermione"]), ("p", ["harry-potter"])])
    words = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert "".join(words[i] for i in herm) == "▁Hermione▁Hermione"
    assert "".join(words[i] for i in harry) == "▁harry-potter"   # the word-start piece counts too
    assert (pieces[harry[0]].start, pieces[harry[-1]].end) == (13, 25)

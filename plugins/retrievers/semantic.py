"""semantic: few-shot examples most similar to the input by embedding (``retrieval.type: semantic``).

The encoder (``prompt.retrieval.model_name``) is a sentence-transformers model when that package is installed and
the model is one of its (``modules.json`` in a local directory, or any hub id), else a plain transformers encoder
(``AutoModel``) whose last hidden states are mean-pooled over the attention mask, the pooling sentence-transformers
applies to most models. Embeddings are L2-normalised, so a dot product is the cosine similarity. Encoders are
loaded once per process (train, then evaluate in the same process reuse it).
"""
import functools
from pathlib import Path

from fw.plugin import (FwError, RetrieverPlugin, device, ensure_pad_token, hookimpl, hub_error_message, hub_token,
                       looks_like_path, quiet_libraries)

SCHEMA = "fw.schemas:retrievers/semantic.json"
EMBEDDINGS_FILE = "embeddings.npy"
#: queries compared to the whole index at once (bounds the similarity matrix's memory)
QUERY_CHUNK = 1024


@hookimpl
def fw_retrievers():
    return [RetrieverPlugin(name="semantic", schema=SCHEMA,
                            summary="k most similar training rows (sentence embeddings) as few-shot examples",
                            build_index=f"{__name__}:build_index", localize_params=f"{__name__}:localize_params")]


def localize_params(params: dict) -> dict:
    """A local ``model_name`` made absolute (and checked), so the saved index works from any directory."""
    return {**params, "model_name": resolve_model_name(params["model_name"])} if params.get("model_name") else params


def build_index(params: dict, texts: list, directory):
    """Embed the training ``texts`` with ``model_name`` into ``directory/embeddings.npy``, or load that file
    when it is there already (the cached index: nothing is embedded again)."""
    import numpy

    stored = Path(directory) / EMBEDDINGS_FILE
    if stored.is_file():
        vectors = numpy.load(stored)
    else:
        vectors = embed(params["model_name"], list(texts))
        numpy.save(stored, vectors)
    return SemanticIndex(params["model_name"], list(texts), vectors)


class SemanticIndex:
    """Nearest neighbours by cosine similarity (the embeddings are unit length: a dot product)."""

    def __init__(self, model_name: str, texts: list, vectors):
        self.model_name, self.vectors = model_name, vectors
        self.position_of = {text: position for position, text in enumerate(texts)}

    def query(self, texts: list, k: int, exclude: list) -> list:
        """For each query, the positions of the ``k`` most similar indexed texts, most similar first."""
        found = []
        for start in range(0, len(texts), QUERY_CHUNK):
            chunk = slice(start, start + QUERY_CHUNK)
            found += self._nearest(self.embed(texts[chunk]), k, exclude[chunk])
        return found

    def embed(self, texts: list):
        """Query embeddings; a text that is in the index (a training row) reuses its stored embedding."""
        import numpy

        vectors = numpy.zeros((len(texts), self.vectors.shape[1]), dtype=numpy.float32)
        unknown = [i for i, text in enumerate(texts) if text not in self.position_of]
        for i, text in enumerate(texts):
            if text in self.position_of:
                vectors[i] = self.vectors[self.position_of[text]]
        if unknown:
            vectors[unknown] = embed(self.model_name, [texts[i] for i in unknown])
        return vectors

    def _nearest(self, queries, k: int, exclude: list) -> list:
        import numpy

        similarity = queries @ self.vectors.T
        found = []
        for row, skipped in zip(similarity, exclude):
            if skipped:
                row = row.copy()
                row[list(skipped)] = -numpy.inf
            wanted = min(k, len(row))
            if wanted <= 0:
                found.append([])
                continue
            top = numpy.argpartition(-row, wanted - 1)[:wanted] if wanted < len(row) else numpy.arange(len(row))
            top = top[numpy.lexsort((top, -row[top]))]
            found.append([int(p) for p in top if numpy.isfinite(row[p])])
        return found


# -- the encoder ----------------------------------------------------------------------------------------------
CONFIG_PATH = "prompt.retrieval.model_name"
BATCH_SIZE = 32
#: longest text embedded, in tokens (sentence encoders are trained on short texts; longer ones are cut)
MAX_TOKENS = 512
EXAMPLE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_model_name(name: str) -> str:
    """A local encoder directory made absolute (checked), or a hub id unchanged."""
    if not looks_like_path(name):
        return name
    path = Path(name).expanduser()
    if not path.is_dir():
        raise FwError(f"{CONFIG_PATH}: local path '{name}' does not exist or is not a directory. Give a directory "
                      f"holding an embedding model (saved with save_pretrained or sentence-transformers) or a "
                      f"Hugging Face Hub id such as {EXAMPLE_MODEL}.")
    if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
        raise FwError(f"{CONFIG_PATH}: '{name}' is not a model directory (no config.json or modules.json in it). "
                      f"Give a directory saved with save_pretrained, or a hub id such as {EXAMPLE_MODEL}.")
    return str(path.resolve())


def embed(model_name: str, texts: list[str]):
    """(len(texts), dim) float32 numpy array of unit-length embeddings of ``texts``."""
    import numpy

    if not texts:
        return numpy.zeros((0, 0), dtype=numpy.float32)
    return load_encoder(resolve_model_name(model_name))(list(texts))


@functools.lru_cache(maxsize=4)
def load_encoder(location: str):
    """A function texts -> normalised embeddings for the model at ``location`` (hub id or absolute path)."""
    quiet_libraries()
    if _sentence_transformers_available() and _is_sentence_transformers_model(location):
        return _sentence_transformers_encoder(location)
    return _transformers_encoder(location)


def _sentence_transformers_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("sentence_transformers") is not None


def _is_sentence_transformers_model(location: str) -> bool:
    path = Path(location)
    return (path / "modules.json").is_file() if path.is_dir() else True


def _load_failure(location: str, exc: BaseException) -> FwError:
    return FwError(hub_error_message(location, exc, key=CONFIG_PATH))


def _sentence_transformers_encoder(location: str):
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(location, device=device(), token=hub_token(), trust_remote_code=False)
    except Exception as exc:  # any library failure becomes one line naming the config key
        raise _load_failure(location, exc) from None

    def encode(texts: list[str]):
        import numpy

        vectors = model.encode(texts, batch_size=BATCH_SIZE, normalize_embeddings=True, show_progress_bar=False,
                               convert_to_numpy=True)
        return numpy.asarray(vectors, dtype=numpy.float32)

    return encode


def _transformers_encoder(location: str):
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, token=hub_token(), trust_remote_code=False)
        model = AutoModel.from_pretrained(location, token=hub_token(), trust_remote_code=False)
    except Exception as exc:  # any library failure becomes one line naming the config key
        raise _load_failure(location, exc) from None
    ensure_pad_token(tokenizer)
    model = model.to(device()).eval()
    limit = min(int(getattr(tokenizer, "model_max_length", MAX_TOKENS) or MAX_TOKENS), MAX_TOKENS)

    def encode(texts: list[str]):
        import numpy

        parts = [_mean_pooled(model, tokenizer, texts[start:start + BATCH_SIZE], limit)
                 for start in range(0, len(texts), BATCH_SIZE)]
        return numpy.concatenate(parts).astype(numpy.float32)

    return encode


def _mean_pooled(model, tokenizer, texts: list[str], limit: int):
    """Mean of the last hidden states over the real (unpadded) tokens, L2-normalised."""
    import torch

    batch = tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    batch = {key: value.to(model.device) for key, value in batch.items() if key in ("input_ids", "attention_mask")}
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.float()
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()

"""semantic: few-shot examples most similar to the input by embedding (``retrieval.type: semantic``)."""
from fw.plugin.hookspecs import hookimpl
from fw.plugin.descriptors import RetrieverPlugin

SCHEMA = "fw.schemas:retrievers/semantic.json"
EMBEDDINGS_FILE = "embeddings.npy"
#: queries compared to the whole index at once (bounds the similarity matrix's memory)
QUERY_CHUNK = 1024


@hookimpl
def fw_retrievers():
    return [RetrieverPlugin(name="semantic", schema=SCHEMA,
                            summary="k most similar training rows (sentence embeddings) as few-shot examples",
                            build_index=f"{__name__}:build_index")]


def build_index(params: dict, texts: list, directory):
    """Embed the training ``texts`` with ``model_name`` into ``directory/embeddings.npy``, or load that file
    when it is there already (the cached index: nothing is embedded again)."""
    from pathlib import Path

    import numpy

    from fw.data import embedding

    stored = Path(directory) / EMBEDDINGS_FILE
    if stored.is_file():
        vectors = numpy.load(stored)
    else:
        vectors = embedding.embed(params["model_name"], list(texts))
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
            from fw.data import embedding

            vectors[unknown] = embedding.embed(self.model_name, [texts[i] for i in unknown])
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

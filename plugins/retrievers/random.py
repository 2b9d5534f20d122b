"""random: few-shot examples drawn at random from the training set (``prompt.retrieval.type: random``)."""
from fw.plugin import RetrieverPlugin, hookimpl

SCHEMA = "fw.schemas:retrievers/random.json"


@hookimpl
def fw_retrievers():
    return [RetrieverPlugin(name="random", schema=SCHEMA,
                            summary="k random training rows as few-shot examples",
                            build_index=f"{__name__}:build_index")]


def build_index(params: dict, texts: list, directory):
    """Random retrieval needs no stored index: the examples are drawn per query, seeded by ``params['seed']``
    (``trainer.seed``) and the query text, so a row gets the same examples in every run and every verb."""
    return RandomIndex(len(texts), int(params.get("seed") or 0))


class RandomIndex:
    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed

    def query(self, texts: list, k: int, exclude: list) -> list:
        """For each query, ``k`` distinct positions (fewer when the rest are excluded), in drawn order."""
        return [self._draw(text, k, skipped) for text, skipped in zip(texts, exclude)]

    def _draw(self, text: str, k: int, skipped: set) -> list:
        import zlib

        import numpy

        wanted = min(k, self.size - len(skipped))
        if wanted <= 0:
            return []
        rng = numpy.random.default_rng([self.seed, zlib.crc32(str(text).encode("utf-8"))])
        drawn = rng.choice(self.size, size=min(self.size, wanted + len(skipped)), replace=False)
        return [int(position) for position in drawn if int(position) not in skipped][:wanted]

"""semantic: few-shot examples most similar to the input by embedding (``retrieval.type: semantic``)."""
from fw.hookspecs import hookimpl
from fw.types import RetrieverPlugin

#: the planned work that builds retrieval
AREA = "issue 'Generation, category extraction, ... retrieval'"
SCHEMA = "fw.schemas:retrievers/semantic.json"


@hookimpl
def fw_retrievers():
    return [RetrieverPlugin(name="semantic", schema=SCHEMA,
                            summary="k most similar training rows (sentence embeddings) as few-shot examples",
                            build_index=f"{__name__}:build_index")]


def build_index(params: dict, train_rows, cache_dir):
    """Embed the training rows with ``model_name`` and index them for nearest-neighbour ``.query(row, k)``.
    Not built yet."""
    from fw.errors import NotBuiltYetError

    raise NotBuiltYetError("semantic few-shot retrieval", AREA)

//! Movie embeddings: catalog text → fastembed vectors → Qdrant (edge or server). Built in issue #3.

"""Data selection: embeddings, the faiss index, retrieval strategies and TracIn reranking."""

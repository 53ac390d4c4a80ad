"""Models, training, acquisition and embeddings for Latent Labeller. Knows nothing of Streamlit or SQL."""

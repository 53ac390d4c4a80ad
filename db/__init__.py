"""Storage for Latent Labeller: schema, engine set-up and queries. Knows nothing of torch or Streamlit."""

# Hugging Face Spaces-style image: port 7860, a non-root user, model weights cached in a volume.
# HARMONY_ALLOW_DOWNLOAD=1: diffusion weights given by Hub id are downloaded on first use here
# (elsewhere they are read from the local cache only).
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 user
ENV HOME=/home/user \
    HF_HOME=/data/hf-cache \
    HARMONY_VOTES_DIR=/data/votes \
    HARMONY_ALLOW_DOWNLOAD=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    PYTHONUNBUFFERED=1
RUN mkdir -p /data/hf-cache && chown -R user /data
VOLUME /data

WORKDIR /home/user/app
COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY --chown=user . .

USER user
EXPOSE 7860
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]

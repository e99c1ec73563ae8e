"""The network: timm backbones (offline-first weights), stages and freezing, heads, decoders, layer counting."""

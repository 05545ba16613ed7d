"""What training and inference both run on: the device and its CPU fast path, the amp level, the
training checkpoint format. Training and inference import this layer; it imports neither of them."""

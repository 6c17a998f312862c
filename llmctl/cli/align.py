"""Commands: llmctl sft, reward, dpo, data import (issue 6). Registered on the shared app by importing this module."""

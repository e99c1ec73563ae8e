"""``python -m finetune …`` is the ``finetune`` console command."""

import sys

from finetune.cli import main

sys.exit(main())

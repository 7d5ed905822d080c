from llm4msr.cli import main

raise SystemExit(main())

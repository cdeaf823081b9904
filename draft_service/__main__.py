from draft_service.server import main

raise SystemExit(main())

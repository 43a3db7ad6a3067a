from interlock.services.ratelimit.main import main

main()

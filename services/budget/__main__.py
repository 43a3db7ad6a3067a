from interlock.services.budget.main import main

main()

"""One module per `campaignq` sub-command: HELP, add_arguments(parser) and run(args)."""

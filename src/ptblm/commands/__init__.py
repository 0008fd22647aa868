"""One module per `ptblm` command. A DVC stage's entry point imports only its own command's
module, so a stage depends on the code it runs and on no other command's (see `codedeps`)."""

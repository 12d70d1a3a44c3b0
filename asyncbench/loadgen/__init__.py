"""MLPerf LoadGen integration: the accuracy checker (and later the SUT/QSL glue)."""

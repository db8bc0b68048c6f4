"""Who does what in a private generation, and the two ways to run them, above mpc/.

- remote.py: the dealer, client and model-owner services and a party's view of them over comm/'s links;
- party.py: `comet party --role R`, one role as its own OS process;
- tcp_run.py: `transport=tcp`, the five roles as processes on this machine; emulated.py: their P0-P1 link
  emulating a network preset (`transport.emulate`);
- inprocess.py: the default, all five roles in one process; run_config.py: the config checks all share.

They use the protocol engine (Dealer, MPC, the ideal functions, LocalPeers, the ring codec) over the
links of comm/, which carries bytes and knows no protocol type.
"""

"""The roles of a tcp run (dealer, client, model owner, and a party's view of them), above mpc/.

They use the protocol engine (Dealer, MPC, the ideal functions, LocalPeers, the ring codec) over the
links of comm/, which carries bytes and knows no protocol type.
"""

from web3 import Web3


def test_dev_node_serves_chain_id_and_funded_accounts(dev_node, dev_accounts):
    w3 = Web3(Web3.HTTPProvider(dev_node.http_url))
    assert w3.eth.chain_id == 1337
    assert w3.eth.block_number == 0
    assert w3.eth.get_balance(Web3.to_checksum_address(dev_accounts[0].address)) == 10_000 * 10**18

"""The phone page's class names come from shared/labels.py, filled in when the server reads the page."""
import json
import re

from cassava.shared.server.page import PAGE_FILE, content_security_policy, with_class_names


def test_the_page_gets_the_class_names_from_labels_and_its_csp_still_allows_its_script():
    raw = PAGE_FILE.read_text(encoding="utf-8")
    html = with_class_names(raw)
    names = json.loads(re.search(r'<script type="application/json" id="class-names">(.*?)</script>', html).group(1))
    assert names == {"cbb": "Cassava Bacterial Blight", "cbsd": "Cassava Brown Streak Disease",
                     "cgm": "Cassava Green Mite", "cmd": "Cassava Mosaic Disease", "healthy": "Healthy",
                     "unknown": "Unknown"}
    # the data block is not script: the one executable script's hash is the same with or without the names
    assert content_security_policy(html) == content_security_policy(raw)
    assert "Mottle" not in html

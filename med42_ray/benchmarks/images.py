"""Which questions need a picture (or another exhibit) that their text does not carry.

Nori et al. (2023) and Med42 exclude such questions; the evaluator does too, and counts them.
The decontaminator still indexes them (their text is public all the same).

Rules (tuned on shared/data/raw; tests pin the counts):
* HEAD-QA: the item's `image` field names a picture (or the stem says "linked to image").
* USMLE sample items: any sentence of the stem that
  - names a visual (photograph, photomicrograph, x-ray, MRI, CT, graph, curve, plot, diagram,
    drawing, ECG, tracing, rhythm strip, pedigree, smear, rash, lesion, abstract, table,
    advertisement, ...) AND says it is shown / displayed / depicted / illustrated; not when "shown"
    is in the perfect tense ("Pap smears have shown no abnormalities"). "Results of laboratory
    studies are shown: Hemoglobin ..." names no visual: the data are printed in the text;
  - or refers to "labeled" points/cells/arteries/areas in a figure, to "the graph/diagram/
    photograph/figure", "in the table", "findings shown", "as shown";
  - or is a table placeholder left by the scraper ("are shown: XXX").
  Items whose options are only letters in a figure, or that refer to an abstract or advertisement
  printed on other pages of the booklet, are flagged by the USMLE reader itself.
* MedQA, MedMCQA, PubMedQA, MMLU: text-only by construction; never flagged ("shown" there always
  introduces printed lab values).
"""

from __future__ import annotations

import re

_VISUAL = (r"photo\w*|micrograph\w*|x-? ?rays?|radiograph\w*|MRIs?|CT|scans?|images?|ultrasonogra\w+|sonograms?"
           r"|drawings?|diagrams?|graphs?|curves?|plots?|figures?|illustrations?|ECGs?|electrocardiogra\w+"
           r"|tracings?|rhythm strips?|pedigrees?|smears?|arteriograms?|angiogra\w+|hysterosalpingogra\w+"
           r"|rash|lesions?|wounds?|swelling|abstract|table|advertisement|specimens?|slides?")
# the visual comes first and the display verb follows in the same clause: "A photograph of the
# lesion is shown", "the rash shown", "Photomicrographs ... are shown: A is ..."; lab tables flattened
# into the text carry no period, so "studies are shown: ... ECG shows AF" must not count (hence no ':' between)
_VISUAL_SHOWN = re.compile(rf"\b({_VISUAL})\b[^.;:?]{{0,80}}?\b(shown|displayed|depicted|illustrated)\b|:\s*shown\b",
                           re.I)
_PERFECT = re.compile(r"\b(has|have|had)\s+(been\s+)?shown\b", re.I)
_FIGURE_REF = re.compile(
    r"\blabeled\s+(\w+\s+)?(points?|cells?|arter\w+|areas?|locations?|structures?|sites?|lines?|regions?)\b"
    r"|\blabeled by\b|\bthe (graph|diagram|photograph|photomicrograph|figure|illustration|drawing)s?\b"
    r"|\bin the table\b|\bshown:\s*XXX\b|\bfindings (are |is )?shown\b|\bas shown\b", re.I)
_SENTENCE = re.compile(r"(?<=[.?!])\s+(?=[A-Z(\"“])")


def usmle_needs_image(stem: str) -> bool:
    for sentence in _SENTENCE.split(stem):
        if _FIGURE_REF.search(sentence):
            return True
        if _VISUAL_SHOWN.search(_PERFECT.sub("", sentence)):
            return True
    return False


def headqa_needs_image(image_field: str | None, qtext: str) -> bool:
    return bool((image_field or "").strip()) or bool(re.search(r"linked to (the )?image", qtext, re.I))
